"""``python -m diffaccel info`` | ``python -m diffaccel bench [...]``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="diffaccel")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends and compiled CUDA architectures")
    sub.add_parser("demo", help="the stroke-size noising step on every backend, checked against the reference")
    bench = sub.add_parser("bench", help="benchmark table: every backend beside the reference")
    from .bench import add_arguments

    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import format_info

        print(format_info())
        return 0
    if args.command == "demo":
        from .demo import main as demo

        return demo()
    from .bench import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
