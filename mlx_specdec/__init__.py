"""mlx-specdec: exact speculative decoding for Gemma 4 on MLX with its MTP assistant drafter."""

__version__ = "0.1.0"


def main() -> None:
    """The `specdec` console entry point. Importing the CLI loads mlx (a second or two): Ctrl-C
    then ends the process with one line and exit status 130, not a traceback."""
    import sys

    try:
        from .cli import app
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        raise SystemExit(130) from None
    app()
