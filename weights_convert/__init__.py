"""Hugging Face Gemma 4 checkpoints -> MLX bundles: fetch, check, quantise, write atomically.

`convert(target=..., drafter=..., output=...)` is the whole contract (the `specdec convert`
command only parses arguments). Modules: `fetch` (hub or folder, safetensors only),
`quantise` (per-module choices and mlx-lm's config format), `write` (streamed shards),
`convert` (the phases and the bundle layout).
"""

from weights_convert.convert import FORMAT_VERSION, convert

__all__ = ["FORMAT_VERSION", "convert"]
