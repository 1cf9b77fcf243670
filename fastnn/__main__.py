"""Command line: ``python -m fastnn info`` and ``python -m fastnn bench``."""
import argparse
import sys


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m fastnn", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="show the build and runtime configuration")
    bench = sub.add_parser("bench", help="race the kernels against NumPy (and PyTorch)")
    from fastnn._bench.cli import add_arguments
    add_arguments(bench)
    args = parser.parse_args(argv)
    if args.command == "info":
        from fastnn import show_config
        show_config()
        return 0
    from fastnn._bench.cli import run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
