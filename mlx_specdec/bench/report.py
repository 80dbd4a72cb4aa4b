"""`specdec bench` reporting: the Rich table, the summary line, the terminal chart, the plot and the JSON file.

Reads a `bench_result.BenchResult`, never runs a model. Files are written whole or not at all: to a
temporary file beside the target, then renamed over it (`files.write_atomically`), so a full disk
or a crash leaves the old file as it was. `check_output` and `check_plot` fail in one line before a
run, not after it.
The plot needs matplotlib (the optional extra `mlx-specdec[plot]`), drawn with the Agg backend.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecdecError
from ..files import check_output, write_atomically
from .result import BenchResult

PLOT_INSTALL = "pip install 'mlx-specdec[plot]'"


# --- terminal ------------------------------------------------------------------------------
def _fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def render_table(result: BenchResult):
    """The modes as a Rich table."""
    from rich.table import Table

    title = (
        f"specdec bench: {result.model}, {len(result.prompts)} prompts x {result.max_tokens} tokens, "
        f"median of {result.trials}{', useless drafter' if result.useless_drafter else ''}"
    )
    table = Table(title=title, caption=f"BLAS: {result.blas or 'n/a'} | energy: {result.energy_source}")
    columns = ("mode", "TTFT ms", "tok/s", "vs plain", "acc/rnd", "accepted hist.", "MiB", "J/tok", "eff.", "exact")
    for col in columns:
        table.add_column(col, justify="left" if col in ("mode", "accepted hist.") else "right", overflow="fold")
    for m in result.modes:
        hist = " ".join(f"{k}:{v}" for k, v in m.accepted_histogram.items())
        table.add_row(
            m.mode,
            _fmt(m.ttft_s and m.ttft_s * 1000, ".0f"),
            _fmt(m.decode_tokens_per_s, ".1f"),
            _fmt(m.speedup, ".2f", "") + ("x" if m.speedup is not None else ""),
            _fmt(m.mean_accepted_per_round, ".2f", "-"),
            hist or "-",
            f"{m.peak_memory_bytes / 2**20:.0f}",
            _fmt(m.joules_per_token, ".3f"),
            _fmt(m.loop_efficiency, ".2f", ""),
            "yes" if m.matches_plain else "NO",
        )
    return table


def summary_line(result: BenchResult) -> str:
    """The headline ratios in one line; shouts when a mode's tokens differ from plain's."""
    s, parts = result.summary, []
    if s.plain_vs_mlx_lm is not None:
        parts.append(f"plain/mlx-lm {s.plain_vs_mlx_lm:.2f}x")
    if s.auto_speedup is not None:
        parts.append(f"auto {s.auto_speedup:.2f}x plain")
    if s.best_fixed_k is not None:
        parts.append(f"best fixed k={s.best_fixed_k} {s.best_fixed_k_speedup:.2f}x")
    if s.loop_efficiency is not None:
        parts.append(f"loop efficiency {s.loop_efficiency:.2f}")
    differ = [m.mode for m in result.modes if not m.matches_plain]
    if differ:
        parts.append("OUTPUT DIFFERS FROM PLAIN: " + ", ".join(differ))
    auto = result.mode("auto")
    if auto:
        parts.append("auto chose k " + " ".join(f"{k}:{v}" for k, v in auto.draft_tokens_histogram.items()))
    return ", ".join(parts)


def curve(result: BenchResult) -> list[tuple[str, float, float | None]]:
    """(k label, tokens/s, tokens/J) for plain (k "0"), each fixed k, and "auto", in run order."""
    return [
        ("0" if m.mode == "plain" else m.mode.removeprefix("k="), m.decode_tokens_per_s or 0.0, m.tokens_per_joule)
        for m in result.modes
        if m.mode != "mlx-lm"
    ]


def terminal_chart(result: BenchResult, width: int = 40) -> str:
    """Tokens/s (and tokens/J when measured) against k as text bars."""
    rows = curve(result)
    lines = []
    for title, idx, unit in (("tokens/s against k", 1, "tok/s"), ("tokens/J against k", 2, "tok/J")):
        values = [r[idx] for r in rows]
        if any(v is None for v in values):
            lines.append(f"{title}: n/a (no energy counter)")
            continue
        top = max(values) or 1.0
        lines.append(title)
        for label, v in zip((r[0] for r in rows), values):
            bar = "█" * max(1, round(width * v / top)) if v else ""
            lines.append(f"  k={label:<4} {bar} {v:.1f} {unit}")
    return "\n".join(lines)


# --- files ---------------------------------------------------------------------------------
def write_json(document: BenchResult | dict, path: str | Path) -> None:
    """The JSON document (a BenchResult or any dict of them), indented, written atomically."""
    data = document.to_dict() if isinstance(document, BenchResult) else document
    text = json.dumps(data, indent=2, default=lambda o: o.to_dict()) + "\n"
    write_atomically(path, lambda f: f.write(text.encode()))


# --- the plot ------------------------------------------------------------------------------
def require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SpecdecError(f"--plot needs matplotlib: {PLOT_INSTALL}") from None


def plot_format(path: str | Path) -> str:
    """The image format from the file's suffix (png without one); one-line error if matplotlib cannot write it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = FigureCanvasAgg(Figure()).get_supported_filetypes()
    if fmt not in supported:
        raise SpecdecError(f"{path}: cannot draw a .{fmt} plot; use .png, .svg or .pdf")
    return fmt


def check_plot(path: str | Path) -> None:
    """Before a run: matplotlib is installed, the format is known, the path is writable."""
    require_matplotlib()
    plot_format(path)
    check_output(path, "--plot")


def make_figure(result: BenchResult):
    """A matplotlib Figure: tokens/s (top) and tokens/J (bottom, when measured) against k, as bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = curve(result)
    labels = [label for label, _, _ in rows]
    panels = [("tokens/s", [r[1] for r in rows], "tab:blue")]
    if rows and all(r[2] is not None for r in rows):
        panels.append(("tokens/J", [r[2] for r in rows], "tab:green"))
    fig = Figure(figsize=(max(4.0, 0.7 * len(rows) + 1.5), 2.8 * len(panels)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for ax, (name, values, colour) in zip(axes, panels):
        colours = ["tab:red" if label == "auto" else colour for label in labels]
        bars = ax.bar(labels, values, color=colours)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_ylabel(name)
        ax.margins(y=0.15)
    lm = result.mode("mlx-lm")
    if lm is not None and lm.decode_tokens_per_s:
        axes[0].axhline(lm.decode_tokens_per_s, color="grey", linestyle="--", linewidth=1, label="mlx-lm")
        axes[0].legend(loc="lower right", fontsize=8)
    axes[-1].set_xlabel("draft tokens per round (k; 0 = plain)")
    extra = ", useless drafter" if result.useless_drafter else ""
    axes[0].set_title(f"{result.model}: {len(result.prompts)} prompts x {result.max_tokens} tokens{extra}", fontsize=9)
    return fig


def write_plot(result: BenchResult, path: str | Path) -> None:
    """The figure as an image (format from the suffix), written atomically."""
    require_matplotlib()
    fmt = plot_format(path)
    fig = make_figure(result)
    write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=120))


# --- before a run (`command.run_bench`) ----------------------------------------------------
def prepare_run(json_path: Path | None, plot: Path | None):
    """Before a bench run (plain or synthetic): fail now, in one line, if --json or --plot cannot be
    written, not after the whole run; then say which BLAS runs -> (stderr console, BLAS description)."""
    from rich.console import Console

    from ..blas import describe_blas

    if json_path is not None:
        check_output(json_path, "--json")
    if plot is not None:
        check_plot(plot)
    err = Console(stderr=True)
    blas = describe_blas()
    err.print(f"BLAS: {blas}")
    return err, blas
