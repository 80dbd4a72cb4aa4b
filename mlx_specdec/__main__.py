"""`specdec` and `python -m mlx_specdec`: the console entry point, above the CLI."""

import sys


def main() -> None:
    """Run the CLI. Importing it loads mlx (a second or two): Ctrl-C then ends the process with
    one line and exit status 130, not a traceback."""
    try:
        from .cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    app()


if __name__ == "__main__":
    main()
