"""One prompt, one answer: what `specdec generate` runs, as a library call.

`generate_records` loads the model (MODEL through `provision.model_folder`, or --target/--drafter,
or --demo), turns the `PromptInput` into ids (`prompt.py`, the one place that decides), and yields
`decode.stream_generate`'s `TokenRecord`s. `json_document` and `summary_line` are the two ways
the command shows a finished run; they read only the records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
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
    log: Callable[[str], None] = lambda line: None,
) -> Iterator[TokenRecord]:
    """Load the model, encode `prompt`, and yield one record per generated token. Raises SpecdecError."""
    from .decode import stream_generate
    from .provision import load_model

    bundle = load_model(model, target=target, drafter=drafter, demo=demo, max_context=settings.max_context, log=log)
    yield from stream_generate(bundle, prompt.encode(bundle.tokenizer), settings)


def json_document(records: Sequence[TokenRecord], trace: bool = False) -> dict:
    """{"token_ids", "text", "stats"} (and "rounds", one entry per round, with `trace`)."""
    out = {
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
