"""mlx-specdec: exact speculative decoding for Gemma 4 on MLX with its MTP assistant drafter.

The package root only names the version: importing it loads nothing else. The console entry
point is `mlx_specdec.__main__.main` (`specdec`, or `python -m mlx_specdec`); ARCHITECTURE.md
draws the layers.
"""

__version__ = "0.1.0"
