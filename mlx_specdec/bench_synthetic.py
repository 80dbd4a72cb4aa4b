"""`specdec bench --synthetic NAME`: real-size speed-up of the drafter, with no download.

Protocol. `synthetic.build` makes the target and drafter with random weights at the family's
shapes, quantised as `convert` would. The prompt is `prompt_tokens` random ids. One plain run of
`max_tokens` tokens gives the target's own greedy continuation (it is also plain's warm-up);
with `acceptance`, the drafter is wrapped in `synthetic.OracleDrafter`, which replaces its
proposals so that draft position i is accepted with probability a_i; without it the random
drafter proposes its own (nearly always rejected) tokens. Then every mode (plain, each k, auto
unless `auto=False`) has a short warm-up and `trials` trials, run mode after mode within a
trial; a mode's figures are medians over trials as in `bench`. Greedy throughout: every mode
must produce plain's tokens (`matches_plain`).

Measured besides bench's figures:
  costs      on a scratch cache at the run's mid context: seconds of a target pass over n
             tokens (n = 1..max_k+1, evaluated, fastest of repeats) and of one drafter step
             (logits' argmax and next hidden evaluated); a plain step is the n = 1 pass.
  host wait  seconds per round from a sync of the loop returning to the next work it issues (a
             sync or a queued `async_eval`): graph building, host reads, bookkeeping, yielding.
             In a drafting round the device idles all that time; a plain round queued earlier
             may still be computing (so for plain rounds it is an upper bound). Timed by
             wrapping the `mx.eval`/`mx.async_eval` that decode.py calls (`host_timer`).
  ideal      speed-up a fixed k would reach with no host overhead: E(k) / ((V(k+1) + k D) / V(1)),
             E(k) = draft_len.expected_tokens(a, k), a = the acceptance measured per position
             (the requested rate where a position was never tried); auto's ideal is the best k.

JSON: bench's schema (`bench.py`), with per-mode keys added and a top-level "synthetic" block:
  modes[i] += {"verify_cost_vs_plain": float | null,   # V(k+1)/V(1); null for auto
               "draft_step_cost_vs_plain": float | null, # D/V(1); null for plain
               "host_wait_s_per_round": float | null,  # all trials
               "host_wait_fraction": float | null,     # of the mean round time
               "ideal_speedup": float | null}
  "synthetic": {"family": str, "bits": int, "group_size": int, "seed": int, "dtype": str,
                "estimated_shapes": bool, "acceptance": [float] | null, "prompt_tokens": int,
                "build_s": float, "build_peak_memory_bytes": int, "target_bytes": int,
                "drafter_bytes": int, "target_parameters": int, "drafter_parameters": int,
                "costs": {"context": int, "verify_s": [float] (n = 1..), "draft_step_s": float | null}}
  "summary" += {"auto_vs_ideal": float | null}
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager

import mlx.core as mx

from . import bench, synthetic
from .draft_len import expected_tokens
from .errors import SpecdecError

MODE_KEYS = ("verify_cost_vs_plain", "draft_step_cost_vs_plain", "host_wait_s_per_round", "host_wait_fraction",
             "ideal_speedup")


class _TimedMx:
    """mlx.core as decode.py sees it, with `eval` timed ((start, end) per sync) and the start of
    every `async_eval` (work queued without a sync) noted."""

    def __init__(self, real):
        self._real = real
        self.spans: list[tuple[float, float]] = []
        self.queued: list[float] = []

    def __getattr__(self, name):
        return getattr(self._real, name)

    def eval(self, *args):
        t = time.perf_counter()
        self._real.eval(*args)
        self.spans.append((t, time.perf_counter()))

    def async_eval(self, *args):
        self.queued.append(time.perf_counter())
        self._real.async_eval(*args)

    def host_wait(self, syncs: int) -> float:
        """Seconds from each of the last `syncs` syncs returning to the next work issued (a sync or
        queued work) after it; the last sync has no successor here and counts nothing."""
        spans = self.spans[-syncs:]
        issues = sorted([s for s, _ in self.spans] + self.queued)
        total, i = 0.0, 0
        for _, end in spans[:-1]:
            while issues[i] < end:
                i += 1
            total += issues[i] - end
        return total


@contextmanager
def host_timer():
    """Time every sync of decode.py's loop while the block runs (restored afterwards)."""
    from . import decode

    timed = _TimedMx(decode.mx)
    decode.mx = timed
    try:
        yield timed
    finally:
        decode.mx = timed._real


def _run(bundle, ids, max_tokens: int, draft, energy) -> tuple[bench.Run, float]:
    """One generation -> (bench.Run, host seconds between the syncs of its decode rounds)."""
    with host_timer() as timer:
        run = bench.run_specdec(bundle, ids, max_tokens, draft, energy)
    return run, timer.host_wait(len(run.rounds) + 1)  # the first token's sync, then one per round


def measure_costs(bundle, drafter, context: int, max_k: int, repeats: int = 5) -> dict:
    """{"context", "verify_s": [s for n = 1..max_k+1 tokens], "draft_step_s"} on a scratch cache: the
    fastest of `repeats` after a warm-up (noise only ever adds time)."""
    from .cache import drafter_kv, make_target_cache

    target = bundle.target
    cache = make_target_cache(target.config, max_rewind=max_k + 2)
    ids = mx.array(synthetic.random_prompt(target.vocab_size, context, seed=1))[None]
    _, hidden = target(ids, cache)
    mx.eval(hidden, [c.state for c in cache])
    h, tok = hidden[:, -1:], mx.array([[11]])

    def fastest(fn) -> float:
        fn()  # warm-up
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    def verify(n: int) -> None:
        logits, hid = target(mx.full((1, n), 11, dtype=mx.int32), cache)
        mx.eval(mx.argmax(logits, axis=-1), hid)
        for c in cache:
            c.trim(n)

    out = {"context": context, "verify_s": [fastest(lambda n=n: verify(n)) for n in range(1, max_k + 2)],
           "draft_step_s": None}
    if drafter is not None:
        kv = drafter_kv(cache, target.kv_layers)

        def step() -> None:
            logits, nh = drafter(target.embed(tok), h, kv, context)
            mx.eval(mx.argmax(logits, axis=-1), nh)

        out["draft_step_s"] = fastest(step)
    return out


def ideal_speedup(acceptance: Sequence[float], costs: dict, k: int) -> float | None:
    """E(k) / ((V(k+1) + k D) / V(1)) with the measured costs."""
    v, d = costs["verify_s"], costs["draft_step_s"]
    if k >= len(v) or (k and d is None) or not v[0]:
        return None
    return expected_tokens(acceptance, k) / ((v[k] + k * (d or 0.0)) / v[0])


def run_synthetic(
    name_or_config,
    *,
    bits: int = 4,
    group_size: int = 64,
    acceptance: Sequence[float] | None = None,
    ks: Sequence[int] = tuple(range(1, bench.MAX_K + 1)),
    auto: bool = True,
    max_tokens: int = 128,
    prompt_tokens: int = 64,
    trials: int = 3,
    seed: int = 0,
    dtype=mx.bfloat16,
    energy=None,
    blas: str = "",
    built: tuple | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Build the synthetic pair, benchmark every mode -> bench's JSON (extended; module docstring).

    `built`: a (Bundle, BuildReport) from `synthetic.build` to reuse (a sweep over acceptance
    rates builds once); its drafter is restored and auto's calibration dropped afterwards.
    """
    from .energy import detect_energy_source

    if trials < 1:
        raise SpecdecError("--trials must be at least 1")
    if max_tokens < 2:
        raise SpecdecError("--max-tokens must be at least 2 (decode speed needs a token after the first)")
    if prompt_tokens < 1:
        raise SpecdecError("--prompt-tokens must be at least 1")
    energy = energy if energy is not None else detect_energy_source()
    if built is None:
        log(f"building synthetic {name_or_config} ({bits}-bit)")
        built = synthetic.build(name_or_config, bits, group_size, seed, dtype)
        log(f"built in {built[1].seconds:.1f} s, peak {built[1].peak_memory_bytes / 2**30:.2f} GiB")
    bundle, report = built
    real_drafter = bundle.drafter
    try:
        return _bench(bundle, report, acceptance=acceptance, ks=ks, auto=auto, max_tokens=max_tokens,
                      prompt_tokens=prompt_tokens, trials=trials, seed=seed, energy=energy, blas=blas, log=log)
    finally:
        bundle.drafter = real_drafter
        bundle.auto_policies.clear()  # calibrated with this run's drafter: not the next run's


def _bench(bundle, report, *, acceptance, ks, auto, max_tokens, prompt_tokens, trials, seed, energy, blas, log) -> dict:
    from mlx_lm import __version__ as mlx_lm_version

    bits, group_size = report.bits, report.group_size
    ids = synthetic.random_prompt(bundle.target.vocab_size, prompt_tokens, seed)
    real_drafter = bundle.drafter

    modes: list[tuple[str, object]] = [("plain", 0)]
    if real_drafter is not None:
        modes += [(f"k={k}", k) for k in ks] + ([("auto", "auto")] if auto else [])
    log("plain run (the target's own continuation)")
    first, _ = _run(bundle, ids, max_tokens, 0, energy)
    if acceptance is not None and real_drafter is not None:
        bundle.drafter = synthetic.OracleDrafter(real_drafter, ids + first.tokens, acceptance, seed)

    runs: dict[str, list[list[bench.Run]]] = {m: [] for m, _ in modes}
    host: dict[str, float] = {m: 0.0 for m, _ in modes}
    for mode, dt in modes[1:]:  # warm-up (auto: its calibration too)
        log(f"warm-up {mode}")
        _run(bundle, ids, min(max_tokens, 16), dt, energy)
    for t in range(trials):
        t0 = time.perf_counter()
        for mode, dt in modes:
            run, wait = _run(bundle, ids, max_tokens, dt, energy)
            runs[mode].append([run])
            host[mode] += wait
        log(f"trial {t + 1}/{trials}: {time.perf_counter() - t0:.1f} s")
    costs = measure_costs(bundle, real_drafter, prompt_tokens + max_tokens // 2, max(ks, default=0))

    entries = [bench.summarise_mode(m, dt, runs[m]) for m, dt in modes]
    plain_rate = entries[0]["decode_tokens_per_s"]
    plain_tokens = [[r.tokens for r in trial] for trial in runs["plain"]]
    requested = list(acceptance) if acceptance is not None else []
    for e in entries:
        e["speedup"] = e["decode_tokens_per_s"] / plain_rate if plain_rate else None
        e["matches_plain"] = [[r.tokens for r in trial] for trial in runs[e["mode"]]] == plain_tokens
        rounds = [rd for trial in runs[e["mode"]] for r in trial for rd in r.rounds]
        seconds = sum(s for _, _, s in rounds)
        e["host_wait_s_per_round"] = host[e["mode"]] / len(rounds) if rounds else None
        e["host_wait_fraction"] = host[e["mode"]] / seconds if seconds else None
        acc = [m if m is not None else (requested[min(i, len(requested) - 1)] if requested else 0.0)
               for i, m in enumerate(e["acceptance_by_position"])]
        k = e["draft_tokens"]
        v, d = costs["verify_s"], costs["draft_step_s"]
        if k == "auto":
            e["verify_cost_vs_plain"] = None
            ideals = [ideal_speedup(acc, costs, j) for j in range(len(v))]
            e["ideal_speedup"] = max((x for x in ideals if x is not None), default=None)
        else:
            e["verify_cost_vs_plain"] = v[k] / v[0] if k < len(v) else None
            e["ideal_speedup"] = ideal_speedup(acc, costs, k)
        e["draft_step_cost_vs_plain"] = d / v[0] if d is not None and k != 0 else None
    by_mode = {e["mode"]: e for e in entries}
    if "auto" in by_mode:
        own = [rd for trial in runs["auto"] for r in trial for rd in r.rounds]
        others = [rd for m, dt in modes if isinstance(dt, int) for trial in runs[m] for r in trial for rd in r.rounds]
        ideal = bench.ideal_rate(own, others)
        by_mode["auto"]["ideal_tokens_per_s"] = ideal
        by_mode["auto"]["loop_efficiency"] = by_mode["auto"]["decode_tokens_per_s"] / ideal if ideal else None

    fixed = [e for e in entries if e["mode"].startswith("k=")]
    best = max(fixed, key=lambda e: e["decode_tokens_per_s"]) if fixed else None
    auto_e = by_mode.get("auto")
    return {
        "schema": bench.SCHEMA,
        "model": bundle.name,
        "blas": blas,
        "energy_source": energy.name,
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm_version,
        "max_tokens": max_tokens,
        "trials": trials,
        "ignore_eos": True,
        "useless_drafter": False,
        "prompts": [{"name": "random", "prompt_tokens": len(ids)}],
        "modes": entries,
        "summary": {
            "plain_vs_mlx_lm": None,
            "auto_speedup": auto_e["speedup"] if auto_e else None,
            "best_fixed_k": best["draft_tokens"] if best else None,
            "best_fixed_k_speedup": best["speedup"] if best else None,
            "loop_efficiency": auto_e["loop_efficiency"] if auto_e else None,
            "auto_vs_ideal": auto_e["speedup"] / auto_e["ideal_speedup"]
            if auto_e and auto_e["speedup"] and auto_e["ideal_speedup"] else None,
        },
        "synthetic": {
            "family": report.name, "bits": bits, "group_size": group_size, "seed": seed, "dtype": report.dtype,
            "estimated_shapes": report.estimated_shapes, "acceptance": list(acceptance) if acceptance else None,
            "prompt_tokens": prompt_tokens, "build_s": report.seconds,
            "build_peak_memory_bytes": report.peak_memory_bytes, "target_bytes": report.target_bytes,
            "drafter_bytes": report.drafter_bytes, "target_parameters": report.target_parameters,
            "drafter_parameters": report.drafter_parameters, "costs": costs,
        },
    }


# --- output ------------------------------------------------------------------------------
def _f(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def render_costs(result: dict):
    """The synthetic figures per mode as a Rich table."""
    from rich.table import Table

    s = result["synthetic"]
    table = Table(title=f"{result['model']}: costs relative to a plain step, host wait, ideal speed-up",
                  caption=f"build {s['build_s']:.1f} s, peak {s['build_peak_memory_bytes'] / 2**30:.2f} GiB; "
                          f"target {s['target_bytes'] / 2**30:.2f} GiB, drafter {s['drafter_bytes'] / 2**20:.0f} MiB")
    for col in ("mode", "verify/plain", "draft/plain", "host ms/round", "host %", "acceptance", "ideal", "measured"):
        table.add_column(col, justify="left" if col in ("mode", "acceptance") else "right")
    for e in result["modes"]:
        acc = " ".join(f"{a:.2f}" for a in e["acceptance_by_position"] if a is not None)
        table.add_row(
            e["mode"], _f(e["verify_cost_vs_plain"], ".2f"), _f(e["draft_step_cost_vs_plain"], ".3f"),
            _f(e["host_wait_s_per_round"] and e["host_wait_s_per_round"] * 1000, ".2f"),
            _f(e["host_wait_fraction"] and 100 * e["host_wait_fraction"], ".1f"), acc or "-",
            _f(e["ideal_speedup"], ".2f"), _f(e["speedup"], ".2f"),
        )
    return table


def write_plot(results: Sequence[dict], path) -> None:
    """PNG: speed-up over plain against acceptance, one colour per k.

    Lines: the ideal speed-up of each k at a uniform acceptance a (costs of the first result);
    markers: each result's measured speed-up, at the mean requested (else measured) acceptance
    of the positions that k drafts; auto as black crosses.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SpecdecError("--plot needs matplotlib (pip install matplotlib)") from None
    costs = results[0]["synthetic"]["costs"]
    ks = sorted({e["draft_tokens"] for r in results for e in r["modes"] if isinstance(e["draft_tokens"], int)} - {0})
    grid = [i / 50 for i in range(51)]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("viridis")
    for j, k in enumerate(ks):
        c = colours(j / max(1, len(ks) - 1))
        ideal = [ideal_speedup([a] * k, costs, k) for a in grid]
        if all(x is not None for x in ideal):
            ax.plot(grid, ideal, color=c, lw=1, alpha=0.6)
        pts = [(_mean_acceptance(r, e, k), e["speedup"]) for r in results for e in r["modes"] if e["draft_tokens"] == k]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o", color=c, label=f"k={k}")
    autos = [(_mean_acceptance(r, e, 4), e["speedup"]) for r in results for e in r["modes"] if e["mode"] == "auto"]
    if autos:
        ax.plot([p[0] for p in autos], [p[1] for p in autos], "kx", ms=9, label="auto")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("acceptance per draft position (markers: mean of the positions drafted)")
    ax.set_ylabel("speed-up over plain decoding")
    ax.set_title(f"{results[0]['model']} ({results[0]['platform']}): lines ideal, markers measured", fontsize=9)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _mean_acceptance(result: dict, entry: dict, k: int) -> float:
    requested = result["synthetic"]["acceptance"]
    if requested:
        return sum(requested[min(i, len(requested) - 1)] for i in range(k)) / k
    measured = [a for a in entry["acceptance_by_position"][:k] if a is not None]
    return sum(measured) / len(measured) if measured else 0.0


def run_cli(name: str, *, model, target, drafter, demo: bool, acceptance: str | None, auto: bool, bits: int,
            ks: str, max_tokens: int, prompt_tokens: int, trials: int, json_path, plot) -> None:
    """`specdec bench --synthetic NAME ...`: run, print the tables, write --json / --plot."""
    import json
    import sys

    from rich.console import Console

    from .blas import describe_blas

    if model is not None or target is not None or drafter is not None or demo:
        raise SpecdecError("give either --synthetic NAME or a model (MODEL, --target/--drafter, --demo), not both")
    rates = synthetic.parse_acceptance(acceptance) if acceptance is not None else None
    k_list = bench.parse_k_list(ks)
    for path in (json_path, plot):
        if path is not None and not path.parent.is_dir():
            raise SpecdecError(f"{path}: cannot write (no folder {path.parent})")
    err = Console(stderr=True)
    blas = describe_blas()
    err.print(f"BLAS: {blas}")
    result = run_synthetic(name, bits=bits, acceptance=rates, ks=k_list, auto=auto, max_tokens=max_tokens,
                           prompt_tokens=prompt_tokens, trials=trials, blas=blas,
                           log=lambda line: err.print(f"[dim]{line}[/dim]"))
    out = Console(width=None if sys.stdout.isatty() else 120)
    out.print(bench.render_table(result))
    out.print(render_costs(result))
    out.print(bench.summary_line(result))
    try:
        if json_path is not None:
            json_path.write_text(json.dumps(result, indent=2) + "\n")
        if plot is not None:
            write_plot([result], plot)
    except OSError as e:
        raise SpecdecError(f"{e.filename}: cannot write ({e.strerror})") from None
