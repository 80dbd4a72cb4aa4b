"""The `specdec` command line: each command parses its options and calls one library function.

User errors (`SpecdecError`) print one line `error: ...` and exit 1, never a traceback.
"""

from __future__ import annotations

import json
import sys
from functools import wraps
from pathlib import Path
from typing import List, Optional

import typer

from .errors import SpecdecError

app = typer.Typer(
    help="Exact speculative decoding for Gemma 4 on MLX with its MTP assistant drafter.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root():
    """Exact speculative decoding for Gemma 4 on MLX with its MTP assistant drafter."""
    from .blas import use_optimised_blas

    use_optimised_blas()  # Linux: re-exec once with an optimised BLAS preloaded, when there is one


def user_errors(fn):
    """Turn SpecdecError into `error: <line>` and exit status 1."""

    @wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except SpecdecError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(1)

    return wrapper


def parse_draft_tokens(value: str, no_draft: bool):
    """`--draft-tokens K|auto|off` and `--no-draft` -> int or "auto"."""
    from .draft_len import parse_draft

    return 0 if no_draft else parse_draft(value)


def parse_prompt_ids(text: str) -> list[int]:
    try:
        return [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise SpecdecError(f"--prompt-ids must be comma-separated integers, not {text!r}") from None


# Options shared by generate, chat and bench.
ModelArg = typer.Argument(None, help="A bundle folder made by `specdec convert` (or a target folder).")
TargetOpt = typer.Option(None, "--target", help="Hugging Face-format Gemma 4 target folder.")
DrafterOpt = typer.Option(None, "--drafter", help="Hugging Face-format gemma4_assistant folder.")
DemoOpt = typer.Option(False, "--demo", help="Use the bundled demo pair.")
DraftOpt = typer.Option("auto", "--draft-tokens", "-k", help="Drafts per round: 0-8 or auto.")
NoDraftOpt = typer.Option(False, "--no-draft", help="Plain decoding (no drafter).")
TempOpt = typer.Option(0.0, "--temp", help="Sampling temperature; 0 is greedy.")
TopPOpt = typer.Option(1.0, "--top-p")
TopKOpt = typer.Option(0, "--top-k")
MinPOpt = typer.Option(0.0, "--min-p")
SeedOpt = typer.Option(None, "--seed")
BatteryOpt = typer.Option(
    None, "--battery/--mains",
    help="auto draft length: most tokens per joule (--battery) or per second (--mains); default: per joule on battery.",
)


@app.command()
@user_errors
def generate(
    model: Optional[Path] = ModelArg,
    target: Optional[Path] = TargetOpt,
    drafter: Optional[Path] = DrafterOpt,
    demo: bool = DemoOpt,
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="Prompt text (chat template applied)."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template to --prompt."),
    prompt_ids: Optional[str] = typer.Option(None, "--prompt-ids", help="Comma-separated token ids."),
    max_tokens: int = typer.Option(256, "--max-tokens", "-m"),
    draft_tokens: str = DraftOpt,
    no_draft: bool = NoDraftOpt,
    temp: float = TempOpt,
    top_p: float = TopPOpt,
    top_k: int = TopKOpt,
    min_p: float = MinPOpt,
    seed: Optional[int] = SeedOpt,
    stop: List[str] = typer.Option([], "--stop", help="Stop string (repeatable)."),
    max_context: Optional[int] = typer.Option(None, "--max-context", help="Context limit in tokens."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object: token_ids, text, stats."),
    trace: bool = typer.Option(False, "--trace", help="With --json: add one entry per round."),
    battery: Optional[bool] = BatteryOpt,
):
    """Generate text for one prompt, speculatively (or plainly with --no-draft)."""
    from .decode import stream_generate
    from .load import load
    from .sampling import SamplingParams
    from .stats import RunStats

    if (prompt is None) == (prompt_ids is None):
        raise SpecdecError("give exactly one of --prompt TEXT or --prompt-ids 1,2,3")
    k = parse_draft_tokens(draft_tokens, no_draft)
    bundle = load(model, target=target, drafter=drafter, demo=demo)
    if prompt_ids is not None:
        ids = parse_prompt_ids(prompt_ids)
    elif raw:
        ids = bundle.tokenizer.encode(prompt)
    else:
        ids = bundle.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=True
        )
    params = SamplingParams(temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed)
    rounds = [] if trace else None
    records = []
    for r in stream_generate(
        bundle, ids, max_tokens=max_tokens, draft_tokens=k, sampling=params, stop=stop,
        max_context=max_context, trace=rounds, battery=battery,
    ):
        records.append(r)
        if not as_json:
            sys.stdout.write(r.text)
            sys.stdout.flush()
    stats = RunStats.from_records(records)
    if as_json:
        out = {"token_ids": [r.token for r in records], "text": "".join(r.text for r in records), "stats": stats.to_dict()}
        if trace:
            out["rounds"] = rounds
        typer.echo(json.dumps(out))
    else:
        typer.echo("")
        typer.echo(
            f"[{stats.generated_tokens} tokens, {stats.decode_tokens_per_s:.1f} tok/s, "
            f"{stats.mean_accepted_per_round:.2f} accepted/round, ttft {stats.ttft_s * 1000:.0f} ms]",
            err=True,
        )


@app.command()
@user_errors
def convert(
    target: str = typer.Option(..., "--target", help="Gemma 4 target: hub repo id (owner/name[@revision]) or folder."),
    drafter: str = typer.Option(..., "--drafter", help="Its gemma4_assistant drafter: hub repo id or folder."),
    output: Path = typer.Option(..., "--output", "-o", help="Bundle folder to create."),
    bits: int = typer.Option(4, "--bits", help="4 or 8 (quantised), 16 (the checkpoint's floats)."),
    group_size: int = typer.Option(64, "--group-size", help="Quantisation group size: 32, 64 or 128."),
    force: bool = typer.Option(False, "--force", help="Replace an existing bundle at --output."),
    target_revision: Optional[str] = typer.Option(None, "--target-revision", help="Hub branch, tag or commit."),
    drafter_revision: Optional[str] = typer.Option(None, "--drafter-revision", help="Hub branch, tag or commit."),
):
    """Convert a Hugging Face target and drafter into one MLX bundle (BUNDLE/target is mlx-lm loadable)."""
    from weights_convert import convert as convert_bundle

    existed = output.exists()
    try:
        manifest = convert_bundle(
            target, drafter, output, bits=bits, group_size=group_size, force=force,
            target_revision=target_revision, drafter_revision=drafter_revision,
            log=lambda line: typer.echo(line, err=True),
        )
    except KeyboardInterrupt:  # convert removed its partial output; say so rather than exit silently
        kept = f"{output} is unchanged" if existed else f"nothing was written to {output}"
        typer.echo(f"interrupted: {kept}", err=True)
        raise typer.Exit(130) from None
    sizes = manifest["sizes"]
    typer.echo(f"{output}: target {sizes['target']['bytes'] / 2**20:.1f} MiB, "
               f"drafter {sizes['drafter']['bytes'] / 2**20:.1f} MiB")


@app.command()
@user_errors
def chat(
    model: Optional[Path] = ModelArg,
    target: Optional[Path] = TargetOpt,
    drafter: Optional[Path] = DrafterOpt,
    demo: bool = DemoOpt,
    max_tokens: int = typer.Option(512, "--max-tokens", "-m", help="Most tokens per answer."),
    draft_tokens: str = DraftOpt,
    no_draft: bool = NoDraftOpt,
    temp: float = TempOpt,
    top_p: float = TopPOpt,
    top_k: int = TopKOpt,
    min_p: float = MinPOpt,
    seed: Optional[int] = SeedOpt,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    colour_drafts: bool = typer.Option(False, "--colour-drafts", help="Colour the tokens the drafter proposed (/colour)."),
    battery: Optional[bool] = BatteryOpt,
):
    """Chat in the terminal with live speed, acceptance, memory and energy; one prompt per line when piped.

    With no MODEL: the Gemma 4 E2B bundle in ~/.cache/mlx-specdec, converted on first use.
    """
    from .chat import run_chat

    run_chat(
        str(model) if model else None,
        target=str(target) if target else None,
        drafter=str(drafter) if drafter else None,
        demo=demo, max_tokens=max_tokens, draft_tokens=parse_draft_tokens(draft_tokens, no_draft),
        temp=temp, top_p=top_p, top_k=top_k, min_p=min_p, seed=seed, system=system,
        colour_drafts=colour_drafts, battery=battery,
    )


@app.command()
@user_errors
def bench(
    model: Optional[Path] = ModelArg,
    target: Optional[Path] = TargetOpt,
    drafter: Optional[Path] = DrafterOpt,
    demo: bool = DemoOpt,
    prompts: Optional[Path] = typer.Option(None, "--prompts", help='JSONL file, one {"prompt": ...} per line.'),
    ks: str = typer.Option("1,2,3,4,5,6,7,8", "--k", help="Fixed draft lengths to run, e.g. 1,2,4."),
    max_tokens: int = typer.Option(128, "--max-tokens", "-m", help="Tokens per prompt."),
    trials: int = typer.Option(3, "--trials", help="Trials after the warm-up; figures are their median."),
    no_mlx_lm: bool = typer.Option(False, "--no-mlx-lm", help="Skip the mlx-lm baseline."),
    ignore_eos: bool = typer.Option(False, "--ignore-eos", help="Always generate --max-tokens tokens."),
    raw: bool = typer.Option(False, "--raw", help="Do not apply the chat template to the prompts."),
    useless_drafter: bool = typer.Option(
        False, "--useless-drafter", help="Shuffle the drafter's weights first (auto should match plain)."
    ),
    json_path: Optional[Path] = typer.Option(None, "--json", help="Write the JSON summary to this file."),
    plot: Optional[Path] = typer.Option(None, "--plot", help="Write a PNG of tokens/s and tokens/J against k."),
):
    """Benchmark plain, mlx-lm, fixed k and auto decoding on a prompt suite (median of trials)."""
    from rich.console import Console

    from .blas import describe_blas

    from .bench import SUITE, load_prompts, parse_k_list, render_table, run_bench, summary_line, terminal_chart
    from .bench import write_plot
    from .load import load

    suite = load_prompts(prompts) if prompts is not None else SUITE
    k_list = parse_k_list(ks)
    for path in (json_path, plot):
        if path is not None and not path.parent.is_dir():  # fail now, not after the whole run
            raise SpecdecError(f"{path}: cannot write (no folder {path.parent})")
    err = Console(stderr=True)
    blas = describe_blas()
    err.print(f"BLAS: {blas}")
    bundle = load(model, target=target, drafter=drafter, demo=demo)
    result = run_bench(
        bundle, prompts=suite, ks=k_list, max_tokens=max_tokens, trials=trials, mlx_lm=not no_mlx_lm,
        ignore_eos=ignore_eos, raw=raw, useless_drafter=useless_drafter, blas=blas,
        log=lambda line: err.print(f"[dim]{line}[/dim]"),
    )
    out = Console(width=None if sys.stdout.isatty() else 120)  # a pipe or file gets the whole table
    out.print(render_table(result))
    out.print(summary_line(result))
    out.print(terminal_chart(result))
    try:
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2) + "\n")
        if plot is not None:
            write_plot(result, plot)
    except OSError as e:
        raise SpecdecError(f"{e.filename}: cannot write ({e.strerror})") from None


def main():  # pragma: no cover - console entry point
    app()
