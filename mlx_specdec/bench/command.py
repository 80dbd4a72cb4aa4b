"""`specdec bench`: the command's options as one validated record, and the run that shows them.

`BenchOptions` holds what the command was given. Construction checks the one rule that ties the
options together: a synthetic bench (`synthetic` = a family name or a config.json) replaces the
model, and the options that only a synthetic bench reads (`SYNTHETIC_ONLY`, at other than their
defaults) need one, and --image/--audio need a model. `run_bench` then checks the rest before
anything heavy (the prompt file, the image and audio files, the k list, the --json and --plot paths,
none of which may be an input), runs the real bench (`protocol.run_bench`, then
`media_prefill.time_media_prefill` when images or clips were given) or the synthetic one
(`synthetic_run.run_synthetic`), prints the tables and writes the files.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

from ..errors import UsageError
from ..files import check_apart
from . import report
from .media_prefill import check_media_files

# The options only the synthetic bench reads, as the command line spells them.
SYNTHETIC_ONLY = {
    "acceptance": "--acceptance",
    "auto": "--no-auto",
    "bits": "--bits",
    "prompt_tokens": "--prompt-tokens",
}


@dataclass(frozen=True)
class BenchOptions:
    """What one `specdec bench` run measures and where its results go.

    model, target, drafter, demo: the model, as `provision.load_model` takes it.
    prompts:         a JSONL prompt file (None: the built-in suite, `protocol.SUITE`).
    ks:              the fixed draft lengths as typed ("1,2,4", or "none").
    max_tokens:      tokens per prompt.
    trials:          trials after the warm-up (figures are their median).
    mlx_lm:          also run the mlx-lm baseline.
    ignore_eos:      always generate `max_tokens` tokens.
    raw:             prompts without the chat template.
    useless_drafter: shuffle the drafter's weights first.
    json_path, plot: files to write (None: none).
    synthetic:       a synthetic family (e2b, e4b, 12b, 26b-a4b, 31b) or config.json instead of a model.
    acceptance:      synthetic: oracle acceptance as typed, one rate or one per position.
    auto:            synthetic: run auto (and its calibration).
    bits:            synthetic: quantisation bits, as `convert`.
    prompt_tokens:   synthetic: the random prompt's length.
    images, clips:   also time one prompt holding these images and audio clips (media_prefill.py).
    """

    model: Union[str, Path, None] = None
    target: Optional[Path] = None
    drafter: Optional[Path] = None
    demo: bool = False
    prompts: Optional[Path] = None
    ks: str = "1,2,3,4,5,6,7,8"
    max_tokens: int = 128
    trials: int = 3
    mlx_lm: bool = True
    ignore_eos: bool = False
    raw: bool = False
    useless_drafter: bool = False
    json_path: Optional[Path] = None
    plot: Optional[Path] = None
    synthetic: Optional[str] = None
    acceptance: Optional[str] = None
    auto: bool = True
    bits: int = 4
    prompt_tokens: int = 64
    images: tuple[Path, ...] = ()
    clips: tuple[Path, ...] = ()

    def __post_init__(self):
        if self.synthetic is None:
            given = [f.name for f in fields(self) if f.name in SYNTHETIC_ONLY and getattr(self, f.name) != f.default]
            if given:
                names = list(SYNTHETIC_ONLY.values())
                raise UsageError(f"{', '.join(names[:-1])} and {names[-1]} need --synthetic NAME")
        elif self.model is not None or self.target is not None or self.drafter is not None or self.demo:
            raise UsageError("give either --synthetic NAME or a model (MODEL, --target/--drafter, --demo), not both")
        elif self.images or self.clips:  # a synthetic model has random towers at best: no real figure
            raise UsageError("--image and --audio need a model (MODEL, --target/--drafter, --demo), not --synthetic")


def run_bench(options: BenchOptions, *, log: Callable[[str], None] = lambda line: None) -> None:
    """Run the bench `options` describe: print its tables, write --json / --plot. `log` gets the
    lines of a first-use conversion. Every option is checked before the model loads."""
    synthetic_file = options.synthetic if options.synthetic is not None and Path(options.synthetic).is_file() else None
    check_media_files(options.images, options.clips)
    outputs = {"--json": options.json_path, "--plot": options.plot}
    check_apart(outputs, {"--prompts": options.prompts, "--synthetic": synthetic_file})
    for path in options.images:
        check_apart(outputs, {"--image": path})
    for path in options.clips:
        check_apart(outputs, {"--audio": path})
    if options.synthetic is not None:
        _run_synthetic(options)
    else:
        _run_real(options, log)


def _run_real(o: BenchOptions, log: Callable[[str], None]) -> None:
    from rich.console import Console

    from ..provision import load_model
    from .protocol import SUITE, load_prompts, parse_k_list
    from .protocol import run_bench as run_protocol

    suite = load_prompts(o.prompts) if o.prompts is not None else SUITE
    k_list = parse_k_list(o.ks)
    err, blas = report.prepare_run(o.json_path, o.plot)
    bundle = load_model(o.model, target=o.target, drafter=o.drafter, demo=o.demo, log=log)
    media_prompt = None
    if o.images or o.clips:  # read and placed now: a bad file fails before the long runs
        from . import media_prefill

        media_prompt = media_prefill.prepare(bundle, o.images, o.clips)
    result = run_protocol(
        bundle,
        prompts=suite,
        ks=k_list,
        max_tokens=o.max_tokens,
        trials=o.trials,
        mlx_lm=o.mlx_lm,
        ignore_eos=o.ignore_eos,
        raw=o.raw,
        useless_drafter=o.useless_drafter,
        blas=blas,
        log=lambda line: err.print(f"[dim]{line}[/dim]"),
    )
    media = None
    if media_prompt is not None:
        media = media_prefill.time_media_prefill(bundle, media_prompt, trials=o.trials)
        result.media_prefill = dataclasses.asdict(media)
    out = Console(width=None if sys.stdout.isatty() else 120)  # a pipe or file gets the whole table
    out.print(report.render_table(result))
    out.print(report.summary_line(result))
    if media is not None:
        out.print(media.line(), highlight=False)
    out.print(report.terminal_chart(result))
    if o.json_path is not None:
        report.write_json(result, o.json_path)
    if o.plot is not None:
        report.write_plot(result, o.plot)


def _run_synthetic(o: BenchOptions) -> None:
    from rich.console import Console

    from . import synthetic, synthetic_report
    from .protocol import parse_k_list
    from .synthetic_run import run_synthetic

    rates = synthetic.parse_acceptance(o.acceptance) if o.acceptance is not None else None
    k_list = parse_k_list(o.ks)
    err, blas = report.prepare_run(o.json_path, o.plot)
    result = run_synthetic(
        o.synthetic,
        bits=o.bits,
        acceptance=rates,
        ks=k_list,
        auto=o.auto,
        max_tokens=o.max_tokens,
        prompt_tokens=o.prompt_tokens,
        trials=o.trials,
        blas=blas,
        log=lambda line: err.print(f"[dim]{line}[/dim]"),
    )
    out = Console(width=None if sys.stdout.isatty() else 120)
    out.print(report.render_table(result))
    out.print(synthetic_report.render_costs(result))
    out.print(report.summary_line(result))
    if o.json_path is not None:
        report.write_json(result, o.json_path)
    if o.plot is not None:
        synthetic_report.write_plot([result], o.plot)
