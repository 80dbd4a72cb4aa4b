"""What the `specdec` commands share: the one-line error wrapper, the option aliases, and the
builders that turn option values into library inputs (one `GenerationSettings`, the draft
setting). Prompt text and ids become ids in `prompt.py`, MODEL a folder in `provision.py`.
Options are defined once here as typer `Annotated` aliases.
"""

from __future__ import annotations

import errno
import os
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Optional

import typer

from .errors import SpecdecError, UsageError
from .settings import GenerationSettings, SamplingParams, parse_draft


def user_errors(fn):
    """Turn SpecdecError into `error: <line>` and exit status 1 (2 for a UsageError)."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecdecError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(e.exit_code) from None

    return wrapper


def write_out(text: str) -> None:
    """Write command output to stdout now. A stdout that cannot take it (a full disk, a device
    error) is one line; a closed pipe ends the command quietly (exit 1); the unwritten rest is
    dropped rather than retried, with a traceback, at exit."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except OSError as e:
        devnull = os.open(os.devnull, os.O_WRONLY)  # exit's flush of what is left then succeeds
        os.dup2(devnull, sys.stdout.fileno())
        if e.errno == errno.EPIPE:  # the reader left (`| head`): nobody to tell, like other tools
            raise typer.Exit(1) from None
        raise SpecdecError(f"cannot write the output ({e.strerror or e}); free space or send it elsewhere") from None


def log_err(line: str) -> None:
    """Progress lines (a first-use conversion) go to stderr, so stdout stays the command's output."""
    typer.echo(line, err=True)


# --- options shared by the commands --------------------------------------------------------
Model = Annotated[
    Optional[Path],
    typer.Argument(
        help="A bundle folder, or a model name (e2b, e4b, 12b, 26b-a4b, 31b, a hub id): see `specdec models`."
    ),
]
TargetDir = Annotated[Optional[Path], typer.Option("--target", help="Hugging Face-format Gemma 4 target folder.")]
DrafterDir = Annotated[Optional[Path], typer.Option("--drafter", help="Hugging Face-format gemma4_assistant folder.")]
Demo = Annotated[bool, typer.Option("--demo", help="Use the bundled demo pair.")]
DraftTokens = Annotated[str, typer.Option("--draft-tokens", "-k", help="Drafts per round: 0-8, auto or off.")]
NoDraft = Annotated[bool, typer.Option("--no-draft", help="Plain decoding (no drafter).")]
Temp = Annotated[float, typer.Option("--temp", help="Sampling temperature; 0 is greedy.")]
TopP = Annotated[
    float, typer.Option("--top-p", help="Nucleus sampling: keep the top tokens up to this mass (1 = off).")
]
TopK = Annotated[int, typer.Option("--top-k", help="Keep the K most likely tokens (0 = off).")]
MinP = Annotated[float, typer.Option("--min-p", help="Drop tokens below this fraction of the top one (0 = off).")]
Seed = Annotated[Optional[int], typer.Option("--seed", help="Random seed (0 to 2^64 - 1).")]
Stop = Annotated[list[str], typer.Option("--stop", help="Stop string (repeatable).")]
MaxContext = Annotated[
    Optional[int], typer.Option("--max-context", help="Context limit in tokens (default: the model's).")
]
Exactness = Annotated[
    str,
    typer.Option(
        "--exactness",
        help="strict: where this device's pass widths do not agree bit for bit (specdec check), decode "
        "plainly; relaxed: draft anyway (same distribution, greedy ties may break differently).",
    ),
]
Parallel = Annotated[
    str, typer.Option("--parallel", help="Under mlx.launch with several processes: how to split the model.")
]
Battery = Annotated[
    Optional[bool],
    typer.Option(
        "--battery/--mains",
        help="auto draft length: most tokens per joule (--battery) or per second (--mains); "
        "default: per joule on battery.",
    ),
]


def make_settings(
    *,
    max_tokens: int,
    draft_tokens: str = "auto",
    no_draft: bool = False,
    temp: float = 0.0,
    top_p: float = 1.0,
    top_k: int = 0,
    min_p: float = 0.0,
    seed: Optional[int] = None,
    stop=(),
    max_context: Optional[int] = None,
    battery: Optional[bool] = None,
    exactness: str = "strict",
) -> GenerationSettings:
    """The command line's values -> one validated GenerationSettings (the only place they meet)."""
    sampling = SamplingParams(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
    draft = draft_option(draft_tokens, no_draft)
    return GenerationSettings(
        max_tokens=max_tokens,
        draft=draft,
        sampling=sampling,
        stop=tuple(stop),
        max_context=max_context,
        battery=battery,
        exactness=exactness,
    )


def draft_option(draft_tokens: str, no_draft: bool):
    """-k and --no-draft -> the draft setting; --no-draft with a -k that drafts is a contradiction."""
    draft = parse_draft(draft_tokens)
    if no_draft and draft != 0 and str(draft_tokens).strip().lower() != "auto":  # "auto" is -k's default
        raise UsageError(f"--no-draft and -k {draft_tokens} contradict each other; give one of them")
    return 0 if no_draft else draft


BenchImages = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--image", metavar="PATH", help="Also time the towers and prefill of a prompt with this image (repeatable)."
    ),
]
BenchAudio = Annotated[
    Optional[list[Path]],
    typer.Option(
        "--audio",
        metavar="PATH",
        help="The same with this audio clip (WAV, FLAC, MP3, OGG), after the images (repeatable).",
    ),
]
