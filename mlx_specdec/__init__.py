"""mlx-specdec: exact speculative decoding for Gemma 4 on MLX with its MTP assistant drafter."""

__version__ = "0.1.0"
