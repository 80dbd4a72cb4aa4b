"""The `specdec` command line: each command parses its options and calls one library function.

The options every command shares are defined once, as `Annotated` aliases in `cli_options.py`, and
each command builds one `GenerationSettings` from them (validated before any model is loaded).
User errors (`SpecdecError`) print one line `error: ...` and exit 1, never a traceback; usage
errors exit 2, whether typer finds them (a value of the wrong type) or the library (`UsageError`:
a value out of range, options that contradict each other; errors.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from .cli_options import (
    Battery,
    BenchAudio,
    BenchImages,
    Demo,
    DrafterDir,
    DraftTokens,
    Exactness,
    MaxContext,
    MinP,
    Model,
    NoDraft,
    Parallel,
    Seed,
    Stop,
    TargetDir,
    Temp,
    TopK,
    TopP,
    draft_option,
    log_err,
    make_settings,
    user_errors,
    write_out,
)
from .errors import UsageError

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


@app.command()
@user_errors
def generate(
    model: Model = None,
    target: TargetDir = None,
    drafter: DrafterDir = None,
    demo: Demo = False,
    prompt: Annotated[
        Optional[str], typer.Option("--prompt", "-p", help="Prompt text (chat template applied).")
    ] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template to --prompt.")] = False,
    prompt_ids: Annotated[Optional[str], typer.Option("--prompt-ids", help="Comma-separated token ids.")] = None,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-m", help="Most tokens to generate.")] = 256,
    draft_tokens: DraftTokens = "auto",
    no_draft: NoDraft = False,
    temp: Temp = 0.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    min_p: MinP = 0.0,
    seed: Seed = None,
    stop: Stop = None,
    max_context: MaxContext = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object: token_ids, text, stats.")] = False,
    trace: Annotated[bool, typer.Option("--trace", help="With --json: add one entry per round.")] = False,
    battery: Battery = None,
    exactness: Exactness = "strict",
    images: Annotated[
        Optional[list[str]], typer.Option("--image", help="An image the prompt is about (repeatable).")
    ] = None,
    audio: Annotated[
        Optional[list[str]],
        typer.Option(
            "--audio",
            help="An audio clip (WAV, FLAC, MP3, OGG) the prompt is about, after the images (repeatable).",
        ),
    ] = None,
    parallel: Parallel = "tensor",
):
    """Generate text for one prompt, speculatively (or plainly with --no-draft)."""
    from .oneshot import generate_records, json_document, summary_line
    from .prompt import PromptInput

    source = PromptInput(text=prompt, ids=prompt_ids, raw=raw)
    if trace and not as_json:
        raise UsageError("--trace adds the rounds to the JSON output; add --json")
    settings = make_settings(
        max_tokens=max_tokens,
        draft_tokens=draft_tokens,
        no_draft=no_draft,
        temp=temp,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        stop=stop or [],
        max_context=max_context,
        battery=battery,
        exactness=exactness,
    )
    records, expanded = [], []
    run = generate_records(
        source,
        settings,
        model=model,
        target=target,
        drafter=drafter,
        demo=demo,
        images=images or [],
        audio=audio or [],
        log=log_err,
        prompt_ids=expanded,
        parallel=parallel,
    )
    for r in run:
        records.append(r)
        if not as_json:
            write_out(r.text)
    if as_json:
        write_out(json.dumps(json_document(records, trace, expanded)) + "\n")
    else:
        write_out("\n")
        typer.echo(summary_line(records), err=True)


@app.command()
@user_errors
def convert(
    target: Annotated[
        str, typer.Option("--target", help="Gemma 4 target: hub repo id (owner/name[@revision]) or folder.")
    ],
    drafter: Annotated[str, typer.Option("--drafter", help="Its gemma4_assistant drafter: hub repo id or folder.")],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Bundle folder to create.")
    ],  # str: keeps "" ("" is not ".")
    bits: Annotated[int, typer.Option("--bits", help="4 or 8 (quantised), 16 (the checkpoint's floats).")] = 4,
    group_size: Annotated[int, typer.Option("--group-size", help="Quantisation group size: 32, 64 or 128.")] = 64,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing bundle at --output.")] = False,
    target_revision: Annotated[
        Optional[str], typer.Option("--target-revision", help="Hub branch, tag or commit.")
    ] = None,
    drafter_revision: Annotated[
        Optional[str], typer.Option("--drafter-revision", help="Hub branch, tag or commit.")
    ] = None,
):
    """Convert a Hugging Face target and drafter into one MLX bundle (BUNDLE/target is mlx-lm loadable)."""
    from weights_convert import convert as convert_bundle

    existed = output != "" and os.path.lexists(output)
    try:
        manifest = convert_bundle(
            target,
            drafter,
            output,
            bits=bits,
            group_size=group_size,
            force=force,
            target_revision=target_revision,
            drafter_revision=drafter_revision,
            log=lambda line: typer.echo(line, err=True),
        )
    except KeyboardInterrupt as e:  # Ctrl-C, SIGTERM, SIGHUP: convert removed its partial output; say so
        kept = f"{output} is unchanged" if existed else f"nothing was written to {output}"
        typer.echo(f"interrupted: {kept}", err=True)
        raise typer.Exit(128 + getattr(e, "signum", 2)) from None  # 130 for Ctrl-C (SIGINT is 2)
    sizes = manifest["sizes"]
    vision = (
        f", vision tower {sizes['vision']['bytes'] / 2**20:.1f} MiB (read for images only)" if "vision" in sizes else ""
    )
    if "audio" in sizes:
        vision += f", audio tower {sizes['audio']['bytes'] / 2**20:.1f} MiB (read for audio only)"
    typer.echo(
        f"{output}: target {sizes['target']['bytes'] / 2**20:.1f} MiB, "
        f"drafter {sizes['drafter']['bytes'] / 2**20:.1f} MiB{vision}"
    )


@app.command()
@user_errors
def chat(
    model: Model = None,
    target: TargetDir = None,
    drafter: DrafterDir = None,
    demo: Demo = False,
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-m", help="Most tokens per answer.")] = 512,
    draft_tokens: DraftTokens = "auto",
    no_draft: NoDraft = False,
    temp: Temp = 0.0,
    top_p: TopP = 1.0,
    top_k: TopK = 0,
    min_p: MinP = 0.0,
    seed: Seed = None,
    max_context: MaxContext = None,
    system: Annotated[Optional[str], typer.Option("--system", help="System prompt.")] = None,
    colour_drafts: Annotated[
        bool, typer.Option("--colour-drafts", help="Colour the tokens the drafter proposed (/colour).")
    ] = False,
    thinking: Annotated[
        bool, typer.Option("--thinking", help="Ask the model to think before it answers (/think on|off).")
    ] = False,
    battery: Battery = None,
    exactness: Exactness = "strict",
    parallel: Parallel = "tensor",
):
    """Chat in the terminal with live speed, acceptance, memory and energy; one prompt per line when piped.

    With no MODEL: the Gemma 4 E2B bundle in ~/.cache/mlx-specdec, converted on first use.
    """
    from .chat.terminal import run_chat
    from .provision import model_folder

    settings = make_settings(
        max_tokens=max_tokens,
        draft_tokens=draft_tokens,
        no_draft=no_draft,
        temp=temp,
        top_p=top_p,
        top_k=top_k,
        min_p=min_p,
        seed=seed,
        max_context=max_context,
        battery=battery,
        exactness=exactness,
    )
    run_chat(
        model_folder(model, max_context=settings.max_context, log=log_err, parallel=parallel),
        target=str(target) if target else None,
        drafter=str(drafter) if drafter else None,
        demo=demo,
        settings=settings,
        system=system,
        colour_drafts=colour_drafts,
        thinking=thinking,
        parallel=parallel,
    )


@app.command()
@user_errors
def bench(
    model: Model = None,
    target: TargetDir = None,
    drafter: DrafterDir = None,
    demo: Demo = False,
    prompts: Annotated[
        Optional[Path], typer.Option("--prompts", help='JSONL file, one {"prompt": ...} per line.')
    ] = None,
    ks: Annotated[str, typer.Option("--k", help="Fixed draft lengths, e.g. 1,2,4, or none.")] = "1,2,3,4,5,6,7,8",
    max_tokens: Annotated[int, typer.Option("--max-tokens", "-m", help="Tokens per prompt.")] = 128,
    trials: Annotated[int, typer.Option("--trials", help="Trials after the warm-up; figures are their median.")] = 3,
    no_mlx_lm: Annotated[bool, typer.Option("--no-mlx-lm", help="Skip the mlx-lm baseline.")] = False,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Always generate --max-tokens tokens.")] = False,
    raw: Annotated[bool, typer.Option("--raw", help="Do not apply the chat template to the prompts.")] = False,
    useless_drafter: Annotated[
        bool, typer.Option("--useless-drafter", help="Shuffle the drafter's weights first (auto should match plain).")
    ] = False,
    json_path: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON summary to this file.")] = None,
    plot: Annotated[
        Optional[Path], typer.Option("--plot", help="Plot tokens/s and tokens/J against k (.png/.svg/.pdf).")
    ] = None,
    # --- a synthetic bench instead of a model (bench/synthetic.py); BenchOptions checks these ---
    synthetic: Annotated[
        Optional[str],
        typer.Option(
            "--synthetic", help="Random weights at real shapes: e2b, e4b, 12b, 26b-a4b, 31b or a config.json."
        ),
    ] = None,
    acceptance: Annotated[
        Optional[str],
        typer.Option(
            "--acceptance", help="With --synthetic: oracle acceptance, one rate or per position (0.92,0.79,...)."
        ),
    ] = None,
    no_auto: Annotated[
        bool, typer.Option("--no-auto", help="With --synthetic: skip auto and its calibration.")
    ] = False,
    bits: Annotated[int, typer.Option("--bits", help="With --synthetic: quantisation bits as convert (4, 8, 16).")] = 4,
    prompt_tokens: Annotated[int, typer.Option("--prompt-tokens", help="With --synthetic: random prompt length.")] = 64,
    images: BenchImages = None,
    audio: BenchAudio = None,
):
    """Benchmark plain, mlx-lm, fixed k and auto decoding on a prompt suite (median of trials)."""
    from .bench.command import BenchOptions, run_bench

    options = BenchOptions(
        model=model,
        target=target,
        drafter=drafter,
        demo=demo,
        prompts=prompts,
        ks=ks,
        max_tokens=max_tokens,
        trials=trials,
        mlx_lm=not no_mlx_lm,
        ignore_eos=ignore_eos,
        raw=raw,
        useless_drafter=useless_drafter,
        json_path=json_path,
        plot=plot,
        synthetic=synthetic,
        acceptance=acceptance,
        auto=not no_auto,
        bits=bits,
        prompt_tokens=prompt_tokens,
        images=tuple(images or ()),
        clips=tuple(audio or ()),
    )
    run_bench(options, log=log_err)


@app.command()
@user_errors
def models(
    as_json: bool = typer.Option(False, "--json", help="Print the list as JSON (sizes in bytes)."),
    machines: Annotated[
        Optional[int],
        typer.Option("--machines", help="Memory each needs when this many machines share a model (mlx.launch)."),
    ] = None,
    parallel: Parallel = "tensor",
):
    """List the known Gemma 4 pairs: sizes, memory needed, which are converted locally and exact here."""
    from .listing import print_models
    from .models.shard import split as split_for

    if machines is not None and machines < 1:
        raise UsageError(f"--machines must be at least 1, not {machines}")
    split_for(parallel, None)  # a known mode, or one clear error
    print_models(as_json, machines, parallel)


@app.command()
@user_errors
def serve(
    model: Model = None,
    target: TargetDir = None,
    drafter: DrafterDir = None,
    demo: Demo = False,
    host: Annotated[str, typer.Option("--host", help="Address to listen on; beyond loopback add --api-key.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", help="TCP port (0: any free port, printed at start).")] = 8080,
    api_key: Annotated[
        Optional[str], typer.Option("--api-key", envvar="SPECDEC_API_KEY", help="Require 'Authorization: Bearer KEY'.")
    ] = None,
    max_context: MaxContext = None,
    cache_bytes: Annotated[int, typer.Option("--cache-bytes", help="Prompt caches kept between requests.")] = 2**30,
    max_queue: Annotated[int, typer.Option("--max-queue", help="Requests that may wait; more get 429.")] = 32,
    draft_tokens: DraftTokens = "auto",
    no_draft: NoDraft = False,
    exactness: Exactness = "strict",
    max_tokens: Annotated[
        int,
        typer.Option("--max-tokens", help="Tokens per request: the default and the most one may ask (default 4096)."),
    ] = 4096,
    allowed_host: Annotated[
        Optional[list[str]], typer.Option("--allowed-host", help="Also accept this Host header (repeatable; '*': any).")
    ] = None,
    cors_origin: Annotated[
        Optional[str], typer.Option("--cors-origin", help="Let web pages of this origin call the API (CORS).")
    ] = None,
    body_timeout: Annotated[
        float, typer.Option("--body-timeout", help="Seconds a request body may take to arrive; slower gets 408.")
    ] = 30.0,
    no_fetch: Annotated[
        bool, typer.Option("--no-fetch", help="Refuse http(s) image URLs; only inline data: URLs.")
    ] = False,
    parallel: Parallel = "tensor",
):
    """Serve the model over an OpenAI-compatible HTTP API (chat, completions, tools, streaming)."""
    from .provision import model_folder
    from .serve.app import serve as run_server
    from .settings import GenerationSettings

    draft = draft_option(draft_tokens, no_draft)
    settings = GenerationSettings(max_tokens=max_tokens, draft=draft, max_context=max_context, exactness=exactness)
    run_server(
        model_folder(model, max_context=max_context, log=log_err, parallel=parallel),
        target=target,
        drafter=drafter,
        demo=demo,
        settings=settings,
        parallel=parallel,
        host=host,
        port=port,
        api_key=api_key,
        cache_bytes=cache_bytes,
        max_queue=max_queue,
        body_timeout=body_timeout,
        allowed_host=allowed_host or (),
        cors_origin=cors_origin,
        fetch=not no_fetch,
    )


@app.command()
@user_errors
def check(
    model: Model = None,
    target: TargetDir = None,
    drafter: DrafterDir = None,
    demo: Demo = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object (exact, plain_width, ...).")] = False,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again, not the cached verdict.")] = False,
    tokens: Annotated[int, typer.Option("--tokens", help="Greedy tokens of the end-to-end comparison.")] = 256,
):
    """Is speculative output bit-exact on this machine? Probe the pass widths, then compare plain and speculative."""
    from .check import run_check
    from .provision import load_model

    if tokens < 1:
        raise typer.BadParameter(f"must be at least 1, not {tokens}", param_hint="--tokens")
    bundle = load_model(model, target=target, drafter=drafter, demo=demo, max_context=None, log=log_err)
    result = run_check(bundle, fresh, tokens)
    write_out((json.dumps(result.to_json()) if as_json else "\n".join(result.lines())) + "\n")
    if not result.end_to_end.identical and result.verdict.exact:
        raise typer.Exit(1)  # the probe said exact and the outputs differ: a bug to report
