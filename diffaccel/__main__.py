"""``python -m diffaccel info`` | ``demo [...]`` | ``bench [...]``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="diffaccel")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="versions, backends and compiled CUDA architectures")
    demo = sub.add_parser("demo", help="end-to-end demo on two small trained digit models: writes a report "
                          "with figures (needs the demo extra)")
    bench = sub.add_parser("bench", help="benchmark table: every backend beside the reference")
    from .bench import add_arguments

    add_arguments(bench)
    from .demo import add_arguments as demo_arguments

    demo_arguments(demo)
    args = parser.parse_args(argv)
    if args.command == "info":
        from .info import format_info

        print(format_info())
        return 0
    if args.command == "demo":
        from .demo import run

        return run(args)
    from .bench import run

    return run(args)


if __name__ == "__main__":
    sys.exit(main())
