"""`specdec bench --synthetic` reporting: the costs table and the speed-up-against-acceptance plot.

Reads `bench_synthetic.SyntheticResult`s (or their JSON documents, for plots of a sweep), never
builds a model (`command.run_bench` runs it). Files are written with bench_report's
helpers (atomically; the plot format from the suffix).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from . import report as bench_report
from .synthetic_run import SyntheticResult, ideal_speedup


def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_costs(result: SyntheticResult):
    """The synthetic figures per mode as a Rich table."""
    from rich.table import Table

    s = result.synthetic
    table = Table(
        title=f"{result.model}: costs relative to a plain step, host wait, ideal speed-up",
        caption=f"build {s.build_s:.1f} s, peak {s.build_peak_memory_bytes / 2**30:.2f} GiB; "
        f"target {s.target_bytes / 2**30:.2f} GiB, drafter {s.drafter_bytes / 2**20:.0f} MiB",
    )
    for col in ("mode", "verify/plain", "draft/plain", "host ms/round", "host %", "acceptance", "ideal", "measured"):
        table.add_column(col, justify="left" if col in ("mode", "acceptance") else "right")
    for m in result.modes:
        acc = " ".join(f"{a:.2f}" for a in m.acceptance_by_position if a is not None)
        table.add_row(
            m.mode,
            _f(m.verify_cost_vs_plain, ".2f"),
            _f(m.draft_step_cost_vs_plain, ".3f"),
            _f(m.host_wait_s_per_round and m.host_wait_s_per_round * 1000, ".2f"),
            _f(m.host_wait_fraction and 100 * m.host_wait_fraction, ".1f"),
            acc or "-",
            _f(m.ideal_speedup, ".2f"),
            _f(m.speedup, ".2f"),
        )
    return table


def _mean_acceptance(doc: dict, mode: dict, k: int) -> float:
    requested = doc["synthetic"]["acceptance"]
    if requested:
        return sum(requested[min(i, len(requested) - 1)] for i in range(k)) / k
    measured = [a for a in mode["acceptance_by_position"][:k] if a is not None]
    return sum(measured) / len(measured) if measured else 0.0


def make_figure(results: Sequence[SyntheticResult | dict]):
    """Speed-up over plain against acceptance, one colour per k.

    Lines: each k's ideal speed-up at a uniform acceptance a (costs of the first result);
    markers: each result's measured speed-up, at the mean requested (else measured) acceptance of
    the positions that k drafts; auto as black crosses (at k = 4's positions).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .synthetic_run import Costs

    docs = [r.to_dict() if isinstance(r, SyntheticResult) else r for r in results]
    costs = Costs(**docs[0]["synthetic"]["costs"])
    ks = sorted({m["draft_tokens"] for d in docs for m in d["modes"] if isinstance(m["draft_tokens"], int)} - {0})
    grid = [i / 50 for i in range(51)]
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for j, k in enumerate(ks):
        colour = f"C{j % 10}"
        ideal = [ideal_speedup([a] * k, costs, k) for a in grid]
        if all(x is not None for x in ideal):
            ax.plot(grid, ideal, color=colour, lw=1, alpha=0.6)
        pts = [(_mean_acceptance(d, m, k), m["speedup"]) for d in docs for m in d["modes"] if m["draft_tokens"] == k]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=colour, label=f"k={k}")
    autos = [(_mean_acceptance(d, m, 4), m["speedup"]) for d in docs for m in d["modes"] if m["mode"] == "auto"]
    if autos:
        ax.plot([p[0] for p in autos], [p[1] for p in autos], "kx", ms=9, label="auto")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("acceptance per draft position (markers: mean over the positions drafted)")
    ax.set_ylabel("speed-up over plain decoding")
    ax.set_title(
        f"{docs[0]['model']} ({docs[0]['platform']}): lines ideal from measured costs, markers measured", fontsize=9
    )
    ax.legend(fontsize=8, ncol=2)
    return fig


def write_plot(results: Sequence[SyntheticResult | dict], path: str | Path) -> None:
    """The figure as an image (format from the suffix), written atomically."""
    from ..files import write_atomically

    bench_report.require_matplotlib()
    fmt = bench_report.plot_format(path)
    fig = make_figure(results)
    write_atomically(path, lambda f: fig.savefig(f, format=fmt, dpi=110))
