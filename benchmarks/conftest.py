"""Benchmarks are run on purpose (`make bench`), never as part of `make test`."""
