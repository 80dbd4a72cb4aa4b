"""What the media tests share: a fixture folder's transformers reference and its pair loaded to
run the reference's full length, a user turn of media placeholders then text, and a record of the
prefill's chunks."""

import mlx.core as mx
import numpy as np


def reference(folder) -> dict[str, np.ndarray]:
    """The folder's reference.safetensors (made by transformers) as numpy arrays."""
    return {k: np.array(v) for k, v in mx.load(str(folder / "reference.safetensors")).items()}


def reference_pair(folder):
    """The folder's target and assistant, with no end token: the references run 40 tokens whatever they are."""
    from mlx_specdec.load import load

    b = load(target=folder / "target", drafter=folder / "assistant")
    b.tokenizer.eos_token_ids = []
    return b


def media_turn(bundle, text: str, images=(), clips=()):
    """One user turn: a placeholder per image, then per clip, then `text` -> (expanded ids, media)."""
    from mlx_specdec.media import attach_images, image_placeholders
    from mlx_specdec.media_audio import attach_media, audio_placeholders
    from mlx_specdec.prompt import chat_ids

    places = image_placeholders(bundle, len(images)) if images else ""
    places += audio_placeholders(bundle, len(clips)) if clips else ""
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": places + text}])
    return attach_media(bundle, ids, list(images), list(clips)) if clips else attach_images(bundle, ids, list(images))


def prefill_chunks(monkeypatch) -> list[tuple[int, int]]:
    """Record [start, end) of every chunk the media prefill runs from now on (the list fills as it runs)."""
    from mlx_specdec.media import Media

    chunks, real = [], Media.prefill

    def spy(self, target, chunk_ids, start, cache):
        chunks.append((start, start + len(chunk_ids)))
        return real(self, target, chunk_ids, start, cache)

    monkeypatch.setattr(Media, "prefill", spy)
    return chunks
