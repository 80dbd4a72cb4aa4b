"""One prompt, one answer: what `specdec generate` runs, as a library call.

`generate_records` loads the model (MODEL through `provision.model_folder`, or --target/--drafter,
or --demo), turns the `PromptInput` into ids (`prompt.py`, the one place that decides), and yields
`decode.stream_generate`'s `TokenRecord`s. `json_document` and `summary_line` are the two ways
the command shows a finished run; they read only the records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Optional, Union

from .prompt import PromptInput
from .settings import GenerationSettings
from .stats import RunStats, TokenRecord


def generate_records(
    prompt: PromptInput,
    settings: GenerationSettings,
    *,
    model: Union[str, Path, None] = None,
    target: Optional[Path] = None,
    drafter: Optional[Path] = None,
    demo: bool = False,
    images: Sequence[str] = (),
    audio: Sequence[str] = (),
    log: Callable[[str], None] = lambda line: None,
    prompt_ids: Optional[list] = None,
    parallel: str = "tensor",
) -> Iterator[TokenRecord]:
    """Load the model, encode `prompt` (with `images`, then `audio` clips, before its text), say in `log` what this
    device's numerics mean for the draft length (numerics.notes), and yield one record per
    generated token. `prompt_ids`, a list, receives the prompt's ids as expanded. Under `mlx.launch`
    with several processes the model is split (`parallel`, distributed.py) and they decode in step.
    Raises SpecdecError."""
    from . import probe
    from .distributed import start
    from .media import image_placeholders
    from .media_audio import audio_placeholders, expand_media
    from .numerics import notes
    from .provision import load_model

    run = start(parallel)  # several processes under mlx.launch; else nothing changes
    bundle = load_model(
        model,
        target=target,
        drafter=drafter,
        demo=demo,
        max_context=settings.max_context,
        log=log,
        split=run.split,
        parallel=parallel,
        media=(bool(images), bool(audio)),
    )
    if (images or audio) and prompt.text is not None:  # images, then audio, then text, as Google's examples
        places = (image_placeholders(bundle, len(images)) if images else "") + (
            audio_placeholders(bundle, len(audio)) if audio else ""
        )
        prompt = replace(prompt, text=places + prompt.text)
    # Rank 0 reads the files (under mlx.launch the other machines need not have them); every rank encodes.
    ids, pending = run.first(lambda: expand_media(bundle, prompt.encode(bundle.tokenizer), list(images), list(audio)))
    media = None if pending is None else pending.encode(bundle)
    if prompt_ids is not None:
        prompt_ids.extend(ids)
    for line in notes(probe.verdict(bundle), settings.draft, settings.exactness):
        log(line)
    yield from run.stream_generate(bundle, ids, settings, media=media)


def json_document(records: Sequence[TokenRecord], trace: bool = False, prompt_ids: Sequence[int] = ()) -> dict:
    """{"prompt_ids", "token_ids", "text", "stats"} (and "rounds", one entry per round, with `trace`)."""
    out = {
        "prompt_ids": list(prompt_ids),
        "token_ids": [r.token for r in records],
        "text": "".join(r.text for r in records),
        "stats": RunStats.from_records(records).to_dict(),
    }
    if trace:
        out["rounds"] = [r.round_info.trace() for r in records if r.round_info is not None]
    return out


def summary_line(records: Sequence[TokenRecord]) -> str:
    """The run's figures in one bracketed line: tokens, tokens/s, accepted per round, TTFT."""
    stats = RunStats.from_records(records)
    return (
        f"[{stats.generated_tokens} tokens, {stats.decode_tokens_per_s:.1f} tok/s, "
        f"{stats.mean_accepted_per_round:.2f} accepted/round, ttft {stats.ttft_s * 1000:.0f} ms]"
    )
