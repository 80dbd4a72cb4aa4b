"""`specdec bench --synthetic NAME`: real-size speed-up of the drafter, with no download.

Protocol. `synthetic.build` makes the target and drafter with random weights at the family's
shapes, quantised as `convert` would. The prompt is `prompt_tokens` random ids. One plain run of
`max_tokens` tokens gives the target's own greedy continuation (it is also plain's warm-up);
with `acceptance`, the drafter is wrapped in `synthetic.OracleDrafter`, which replaces its
proposals so that draft position i is accepted with probability a_i; without it the random
drafter proposes its own (nearly always rejected) tokens. Then every mode (plain, each k, auto
unless `auto=False`) has a short warm-up and `trials` trials, run mode after mode within a
trial; a mode's figures are `bench.summarise_mode`'s (medians over trials). Greedy throughout:
every mode must produce plain's tokens (`matches_plain`).

Measured besides bench's figures:
  costs      on a scratch cache at the run's mid context: seconds of a target pass over n
             tokens (n = 1..max_k+1, evaluated, fastest of repeats) and of one drafter step
             (logits' argmax and next hidden evaluated); a plain step is the n = 1 pass.
  host wait  seconds per round from a sync of the loop returning to the round's first work
             reaching the device (a drafting round's drafts, a plain round's first layers):
             host reads, bookkeeping, yielding, graph building up to then. The device idles at
             least that long; a plain round queued and handed over before the previous sync
             counts 0. The loop's optional probe times it (`stats.HostWait`). The host then goes on
             building while the device computes (models/target.py, issue early); a wait after
             that shows in the loop's efficiency (measured against ideal), not here.
  ideal      speed-up a fixed k would reach with no host overhead: E(k) / ((V(k+1) + k D) / V(1)),
             E(k) = draft_len.expected_tokens(a, k), a = the acceptance measured per position
             (the requested rate where a position was never tried); auto's ideal is the best k.

The result is bench's schema ("specdec-bench/1", bench_result.py) extended by the dataclasses
below: `SyntheticMode` adds fields to each mode, `SyntheticSummary` to the summary, and
`SyntheticResult` a "synthetic" block (`SyntheticInfo`, with its `Costs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields

import mlx.core as mx

from ..calibrate import Policies, measure_passes
from ..draft_len import expected_tokens
from ..errors import UsageError
from ..settings import MAX_DRAFT
from . import protocol as bench
from . import synthetic
from .result import BenchResult, BenchSummary, ModeResult, PromptResult, run_info


@dataclass
class SyntheticMode(ModeResult):
    """A mode of the synthetic bench: bench's ModeResult fields, then

    verify_cost_vs_plain:     V(k+1) / V(1), a verify of k+1 tokens against a plain step; None for auto.
    draft_step_cost_vs_plain: D / V(1), one drafter step against a plain step; None for plain.
    host_wait_s_per_round:    seconds per round the device waits for the host (module docstring), all trials.
    host_wait_fraction:       that wait over the mean round time.
    ideal_speedup:            E(k) / ((V(k+1) + k D) / V(1)) at the acceptance measured; auto: the best k.
    """

    verify_cost_vs_plain: float | None = None
    draft_step_cost_vs_plain: float | None = None
    host_wait_s_per_round: float | None = None
    host_wait_fraction: float | None = None
    ideal_speedup: float | None = None


@dataclass
class SyntheticSummary(BenchSummary):
    """bench's BenchSummary fields, then

    auto_vs_ideal: auto's speedup / its ideal_speedup.
    """

    auto_vs_ideal: float | None = None


@dataclass
class Costs:
    """Pass costs measured on a scratch cache (`measure_costs`).

    context:      tokens in the cache when measured (the run's mid context).
    verify_s:     seconds of a target pass over n = 1..max_k+1 tokens (n = 1: a plain step).
    draft_step_s: seconds of one drafter step; None without a drafter.
    """

    context: int
    verify_s: list[float]
    draft_step_s: float | None


@dataclass
class SyntheticInfo:
    """What was built and how (the "synthetic" block of the JSON).

    family:                  the family name or the config file's stem.
    bits:                    quantisation bits (convert's rules per module; 16 = none).
    group_size:              quantisation group size.
    seed:                    seed of the weights, the prompt and the oracle.
    dtype:                   of the activations, scales and unquantised weights.
    estimated_shapes:        True where the shapes are an estimate (12B).
    acceptance:              the oracle's rates per draft position (the last repeats); None: the drafter's own.
    prompt_tokens:           length of the random prompt.
    build_s:                 seconds to build both models.
    build_peak_memory_bytes: mlx's peak memory while building, above what was allocated before.
    target_bytes:            the target's parameter bytes as built (quantised).
    drafter_bytes:           the drafter's.
    target_parameters:       the target's parameter count before quantisation.
    drafter_parameters:      the drafter's.
    costs:                   the measured pass costs (Costs).
    """

    family: str
    bits: int
    group_size: int
    seed: int
    dtype: str
    estimated_shapes: bool
    acceptance: list[float] | None
    prompt_tokens: int
    build_s: float
    build_peak_memory_bytes: int
    target_bytes: int
    drafter_bytes: int
    target_parameters: int
    drafter_parameters: int
    costs: Costs


@dataclass(kw_only=True)
class SyntheticResult(BenchResult):
    """bench's BenchResult fields (modes are SyntheticModes, the summary a SyntheticSummary), then

    synthetic: the SyntheticInfo.
    """

    synthetic: SyntheticInfo


def _run(bundle, ids, max_tokens: int, draft, policies) -> tuple[bench.Run, float]:
    """One generation -> (bench.Run, host seconds the device waited for in its rounds)."""
    run = bench.run_specdec(bundle, ids, max_tokens, draft, stop_tokens=(), policies=policies)
    return run, run.host_s


def measure_costs(bundle, drafter, context: int, max_k: int, repeats: int = 5) -> Costs:
    """Costs of a verify of 1..max_k+1 tokens and of a drafter step on a scratch cache
    (`calibrate.measure_passes`, as auto's calibration measures them)."""
    passes = measure_passes(bundle, max_k, repeats, context, drafter=drafter)
    return Costs(context, passes.verify, passes.draft_step if drafter is not None else None)


def ideal_speedup(acceptance: Sequence[float], costs: Costs, k: int) -> float | None:
    """E(k) / ((V(k+1) + k D) / V(1)) with the measured costs."""
    v, d = costs.verify_s, costs.draft_step_s
    if k >= len(v) or (k and d is None) or not v[0]:
        return None
    return expected_tokens(acceptance, k) / ((v[k] + k * (d or 0.0)) / v[0])


def run_synthetic(
    name_or_config,
    *,
    bits: int = 4,
    group_size: int = 64,
    acceptance: Sequence[float] | None = None,
    ks: Sequence[int] = tuple(range(1, MAX_DRAFT + 1)),
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
) -> SyntheticResult:
    """Build the synthetic pair, benchmark every mode -> SyntheticResult (module docstring).

    `built`: a (Bundle, BuildReport) from `synthetic.build` to reuse (a sweep over acceptance
    rates builds once); its drafter is restored and auto's calibration dropped afterwards.
    """
    from ..energy import detect_energy_source

    if trials < 1:
        raise UsageError("--trials must be at least 1")
    if max_tokens < 2:
        raise UsageError("--max-tokens must be at least 2 (decode speed needs a token after the first)")
    if prompt_tokens < 1:
        raise UsageError("--prompt-tokens must be at least 1")
    energy = energy if energy is not None else detect_energy_source()
    if built is None:
        log(f"building synthetic {name_or_config} ({bits}-bit)")
        built = synthetic.build(name_or_config, bits, group_size, seed, dtype)
        log(f"built in {built[1].seconds:.1f} s, peak {built[1].peak_memory_bytes / 2**30:.2f} GiB")
    bundle, report = built
    real_drafter = bundle.drafter
    try:
        return _bench(
            bundle,
            report,
            acceptance=acceptance,
            ks=ks,
            auto=auto,
            max_tokens=max_tokens,
            prompt_tokens=prompt_tokens,
            trials=trials,
            seed=seed,
            energy=energy,
            blas=blas,
            log=log,
        )
    finally:
        bundle.drafter = real_drafter


def _bench(
    bundle, report, *, acceptance, ks, auto, max_tokens, prompt_tokens, trials, seed, energy, blas, log
) -> SyntheticResult:
    from ..energy import EnergyTimeline

    ids = synthetic.random_prompt(bundle.target.vocab_size, prompt_tokens, seed)
    real_drafter = bundle.drafter
    modes: list[tuple[str, object]] = [("plain", 0)]
    if real_drafter is not None:
        modes += [(f"k={k}", k) for k in ks] + ([("auto", "auto")] if auto else [])
    policies = Policies(bundle)  # this run's: auto calibrates in the warm-up, with this run's drafter
    log("plain run (the target's own continuation)")
    first, _ = _run(bundle, ids, max_tokens, 0, policies)
    if acceptance is not None and real_drafter is not None:
        bundle.drafter = synthetic.OracleDrafter(real_drafter, ids + first.tokens, acceptance, seed)

    runs: dict[str, list[list[bench.Run]]] = {m: [] for m, _ in modes}
    host: dict[str, float] = {m: 0.0 for m, _ in modes}
    for mode, dt in modes[1:]:  # warm-up (auto: its calibration too)
        log(f"warm-up {mode}")
        _run(bundle, ids, min(max_tokens, 16), dt, policies)
    with EnergyTimeline(energy) as timeline:
        for t in range(trials):
            t0 = time.perf_counter()
            for mode, dt in modes:
                run, wait = _run(bundle, ids, max_tokens, dt, policies)
                runs[mode].append([run])
                host[mode] += wait
            log(f"trial {t + 1}/{trials}: {time.perf_counter() - t0:.1f} s")
    bench.add_joules([r for trials_ in runs.values() for trial in trials_ for r in trial], timeline)
    costs = measure_costs(bundle, real_drafter, prompt_tokens + max_tokens // 2, max(ks, default=0))

    ideal = None
    if "auto" in runs:
        own = [rd for trial in runs["auto"] for r in trial for rd in r.rounds]
        others = [rd for m, dt in modes if isinstance(dt, int) for trial in runs[m] for r in trial for rd in r.rounds]
        ideal = bench.ideal_rate(own, others)
    requested = list(acceptance) if acceptance else []
    results = []
    for mode, dt in modes:
        base = bench.summarise_mode(mode, dt, runs[mode], runs["plain"], ideal if mode == "auto" else None)
        m = SyntheticMode(**{f.name: getattr(base, f.name) for f in fields(ModeResult)})
        rounds = [rd for trial in runs[mode] for r in trial for rd in r.rounds]
        seconds = sum(s for _, _, s in rounds)
        m.host_wait_s_per_round = host[mode] / len(rounds) if rounds else None
        m.host_wait_fraction = host[mode] / seconds if seconds else None
        acc = [
            a if a is not None else (requested[min(i, len(requested) - 1)] if requested else 0.0)
            for i, a in enumerate(m.acceptance_by_position)
        ]
        v, d = costs.verify_s, costs.draft_step_s
        if dt == "auto":
            m.ideal_speedup = max((x for j in range(len(v)) if (x := ideal_speedup(acc, costs, j))), default=None)
        else:
            m.verify_cost_vs_plain = v[dt] / v[0] if dt < len(v) else None
            m.ideal_speedup = ideal_speedup(acc, costs, dt)
        m.draft_step_cost_vs_plain = d / v[0] if d is not None and dt != 0 else None
        results.append(m)

    summary = SyntheticSummary(**vars(BenchSummary.from_modes(results)))
    auto_m = next((m for m in results if m.mode == "auto"), None)
    if auto_m and auto_m.speedup and auto_m.ideal_speedup:
        summary.auto_vs_ideal = auto_m.speedup / auto_m.ideal_speedup
    return SyntheticResult(
        **run_info(bundle.name, blas, energy.name),
        max_tokens=max_tokens,
        trials=trials,
        ignore_eos=True,
        useless_drafter=False,
        prompts=[PromptResult("random", len(ids))],
        modes=results,
        summary=summary,
        synthetic=SyntheticInfo(
            family=report.name,
            bits=report.bits,
            group_size=report.group_size,
            seed=seed,
            dtype=report.dtype,
            estimated_shapes=report.estimated_shapes,
            acceptance=requested or None,
            prompt_tokens=prompt_tokens,
            build_s=report.seconds,
            build_peak_memory_bytes=report.peak_memory_bytes,
            target_bytes=report.target_bytes,
            drafter_bytes=report.drafter_bytes,
            target_parameters=report.target_parameters,
            drafter_parameters=report.drafter_parameters,
            costs=costs,
        ),
    )
