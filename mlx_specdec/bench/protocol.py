"""`specdec bench` measurement: plain vs mlx-lm vs speculative (fixed k and auto) on one prompt suite.

This module runs the protocol and computes the statistics. The result is a `BenchResult` of
`ModeResult`s (bench_result.py: those dataclasses are the JSON schema); bench_report.py shows it
(table, summary line, terminal chart, plot) and writes it to files.

Protocol. Every mode runs the same prompt ids (the chat template applied to each prompt of
the suite) with greedy decoding, so every mode produces the same tokens and only speed
differs. One warm-up run per mode (the first prompt; it also pays auto's one-off cost
calibration), then `trials` trials; within a trial every mode runs a prompt before the next
prompt starts, so slow drift of a shared machine touches all modes alike (a busy machine
still makes the figures noisy: read `trials_tokens_per_s`). A trial's figures are
summed over the prompts (tokens/s = decode tokens / decode seconds); a mode's figures are the
median over trials. Speed figures are ratios within one run: compare modes, not machines.

Modes:
  plain    our loop with draft_tokens=0 (one target pass per token)
  mlx-lm   mlx-lm's own `stream_generate` on the same model object and prompt ids, greedy, with
           the model as mlx-lm ships it (our early hand-offs off for the run)
  k=1..8   our loop with a fixed draft length
  auto     our loop with draft_tokens="auto" (the policy in draft_len.py)

Loop efficiency (auto only). The ideal speed is what the best fixed schedule would reach with
the acceptance auto itself saw and the round costs measured in this run:
    ideal = max_k E(k) / C(k),  E(k) = 1 + sum_{i<=k} prod_{j<=i} a_j   (draft_len.expected_tokens)
  a_i   conditional acceptance of draft position i measured over auto's own rounds (accepted
        at i / tried at i); for positions auto never tried, the value pooled over the fixed-k
        modes' rounds, else 0;
  C(k)  mean measured seconds of a round with k drafts (draft + verify + accept + rewind +
        yield, from the tokens' timestamps) over auto's own rounds with that k; for k auto
        never ran, over the rounds with that k of the other modes of our loop (plain gives
        k=0); k values no mode ran are left out of the max.
  loop_efficiency = auto decode tokens/s / ideal. Below 1: auto lost time choosing k (its
  prior, probes, estimates) or to overhead a fixed-k round does not have; it can exceed 1 a
  little when auto adapts k within a prompt better than any single fixed k, or by noise
  (auto's rate is a median of trials, the ideal pools all of auto's rounds).

Energy: whole-machine counters (energy.py) read in the background while the trials run
(`EnergyTimeline`); each run's joules are those between its first token and its end, so they
cover decoding only, like tokens/s, and stay right for runs shorter than the ~2 s in which
Apple's counters publish; null where no counter is readable.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import SpecdecError, UsageError
from ..files import check_regular, user_path
from ..prompt import PromptInput
from ..settings import MAX_DRAFT, GenerationSettings
from ..stats import position_counts, rounds_from_records
from .result import BenchResult, BenchSummary, ModeResult, PromptResult, run_info

SUITE_FILE = Path(__file__).with_name("suite.jsonl")  # the built-in suite, a prompts file like any other


# --- inputs ------------------------------------------------------------------------------
def load_prompts(path: str | Path) -> list[dict]:
    """JSONL file, one {"prompt": str[, "name": str]} per line -> [{"name", "prompt"}]."""
    path = user_path(path, "--prompts")
    if os.path.lexists(path):  # a FIFO would block the read forever; a folder, a dangling link fail in it
        check_regular(path, "give a JSONL prompts file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecdecError(f"{path}: cannot read ({e})") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except (json.JSONDecodeError, RecursionError):  # RecursionError: nested too deeply to read
            expected = 'expected one {"prompt": "..."} object per line'
            raise SpecdecError(f"{path}:{n}: not valid JSON; {expected}") from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise SpecdecError(f'{path}:{n}: expected an object with a non-empty string "prompt"')
        prompts.append({"name": str(item.get("name", f"prompt{len(prompts) + 1}")), "prompt": item["prompt"]})
    if not prompts:
        raise SpecdecError(f'{path}: no prompts (expected JSONL lines like {{"prompt": "..."}})')
    return prompts


def parse_k_list(text: str) -> list[int]:
    """`--k`: "1,2,4" -> [1, 2, 4], each in 1..8; "none" -> [] (no fixed k: plain, mlx-lm and auto only)."""
    text = text.replace(" ", "")
    if text.lower() == "none":
        return []
    try:
        ks = sorted({int(t) for t in text.split(",") if t})
    except ValueError:
        raise UsageError(f"--k must be comma-separated numbers 1-{MAX_DRAFT}, not {text!r}") from None
    if not ks:
        raise UsageError(f"--k needs draft lengths 1-{MAX_DRAFT}, e.g. --k 1,2,4 (or --k none for no fixed k)")
    if any(not 1 <= k <= MAX_DRAFT for k in ks):
        raise UsageError(f"--k values must be between 1 and {MAX_DRAFT}, not {text!r}")
    return ks


SUITE = load_prompts(SUITE_FILE)  # one prompt per kind of work people ask a small model for


def encode_prompt(bundle, prompt: str, raw: bool = False) -> list[int]:
    return PromptInput(text=prompt, raw=raw).encode(bundle.tokenizer)


def make_useless(drafter, seed: int = 0) -> None:
    """Shuffle every drafter tensor's elements in place (seeded): same shapes, no knowledge.

    A drafter that keeps its cost but proposes near-random tokens: the case where `auto` must
    fall back to plain decoding. (token_ordering stays a permutation of the vocabulary.)
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    params = tree_flatten(drafter.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    shuffled = [
        (name, p.reshape(-1)[mx.random.permutation(p.size, key=key)].reshape(p.shape))
        for (name, p), key in zip(params, keys)
    ]
    drafter.update(tree_unflatten(shuffled))
    mx.eval(drafter.parameters())


# --- one run -----------------------------------------------------------------------------
@dataclass
class Run:
    """One generation: what the summary needs, nothing model-specific."""

    generated: int
    ttft_s: float
    decode_tokens: int
    decode_s: float
    rounds: list = field(default_factory=list)  # (k, accepted, seconds) per round after the prefill
    peak_memory_bytes: int = 0
    joules: float | None = None  # filled from the trials' EnergyTimeline (`add_joules`)
    tokens: list = field(default_factory=list)
    host_s: float = 0.0  # the rounds' host time the device waited for (stats.HostWait)
    span: tuple = (0.0, 0.0)  # perf_counter at the first token and at the end: the decoding


def add_joules(runs, timeline) -> None:
    """Each run's decoding energy from `timeline` (energy.EnergyTimeline, closed), in place."""
    for run in runs:
        run.joules = timeline.joules(*run.span)


def run_specdec(bundle, ids, max_tokens: int, draft_tokens, stop_tokens=None, policies=None) -> Run:
    """One generation of our loop. `policies` (calibrate.Policies) keeps auto's calibration and
    what it learnt across the runs of one benchmark; None: a fresh one."""
    import mlx.core as mx

    from ..calibrate import Policies
    from ..decode import stream_generate
    from ..stats import HostWait

    policy = (policies or Policies(bundle)).get(draft_tokens)  # auto: calibrated outside the run
    mx.reset_peak_memory()
    records, t_first, host_wait = [], 0.0, HostWait()
    settings = GenerationSettings(max_tokens=max_tokens, draft=draft_tokens)
    for r in stream_generate(bundle, ids, settings, policy=policy, stop_tokens=stop_tokens, host_wait=host_wait):
        if not records:
            t_first = time.perf_counter()
        records.append(r)
    t_end = time.perf_counter()
    last = records[-1]
    return Run(
        generated=len(records),
        ttft_s=records[0].ttft_s,
        decode_tokens=len(records) - 1,
        decode_s=last.elapsed_s,
        rounds=rounds_from_records(records),
        peak_memory_bytes=int(mx.get_peak_memory()),
        tokens=[r.token for r in records],
        host_s=sum(host_wait.waits),
        span=(t_first, t_end),
    )


def run_mlx_lm(bundle, ids, max_tokens: int, ignore_eos: bool = False) -> Run:
    """mlx-lm's own greedy `stream_generate` on the same model object and prompt ids, with the
    model as mlx-lm ships it: our early hand-offs (models/target.py) are off for the run."""
    import copy

    import mlx.core as mx
    from mlx_lm.generate import stream_generate as lm_stream_generate

    tokenizer = bundle.tokenizer
    if ignore_eos:  # mlx-lm stops on the wrapper's EOS ids: give it a copy without them
        tokenizer = copy.copy(tokenizer)
        tokenizer.eos_token_ids = set()

    mx.reset_peak_memory()
    t0 = time.perf_counter()
    n, t_first, t_last, tokens = 0, 0.0, 0.0, []
    with bundle.target.issuing(0):
        for response in lm_stream_generate(bundle.target.model, tokenizer, mx.array(ids), max_tokens=max_tokens):
            t_last = time.perf_counter()
            tokens.append(int(response.token))
            if n == 0:
                t_first = t_last
            n += 1
    t_end = time.perf_counter()
    return Run(
        generated=n,
        ttft_s=t_first - t0,
        decode_tokens=n - 1,
        decode_s=t_last - t_first,
        peak_memory_bytes=int(mx.get_peak_memory()),
        tokens=tokens,
        span=(t_first, t_end),
    )


# --- statistics --------------------------------------------------------------------------
def ideal_rate(own_rounds, other_rounds) -> float | None:
    """max_k E(k)/C(k): acceptance and costs from `own_rounds`, gaps filled from `other_rounds`.

    Rounds are (k, accepted, seconds). See the module docstring (loop efficiency).
    """
    from ..draft_len import expected_tokens

    tried, hits = position_counts(own_rounds)
    o_tried, o_hits = position_counts([r for r in other_rounds if r[0] > 0])
    acc = [h / t if t else (oh / ot if ot else 0.0) for t, h, ot, oh in zip(tried, hits, o_tried, o_hits)]

    def mean_cost(rounds) -> dict[int, float]:
        sums: dict[int, list[float]] = {}
        for k, _, sec in rounds:
            sums.setdefault(k, []).append(sec)
        return {k: sum(v) / len(v) for k, v in sums.items()}

    cost = {**mean_cost(other_rounds), **mean_cost(own_rounds)}
    rates = [expected_tokens(acc, k) / c for k, c in cost.items() if c > 0]
    return max(rates) if rates else None


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _trial_rates(trials: list[list[Run]]) -> list[float]:
    rates = []
    for runs in trials:
        dec_s = sum(r.decode_s for r in runs)
        rates.append(sum(r.decode_tokens for r in runs) / dec_s if dec_s > 0 else 0.0)
    return rates


def summarise_mode(
    mode: str, draft_tokens, trials: list[list[Run]], plain: list[list[Run]], ideal: float | None = None
) -> ModeResult:
    """Runs of one mode (trials x prompts) -> its ModeResult; `plain`: plain's runs, for speedup and exactness."""
    rates, ttfts, jpt = _trial_rates(trials), [], []
    for runs in trials:
        dec_tokens = sum(r.decode_tokens for r in runs)
        ttfts.append(sum(r.ttft_s for r in runs) / len(runs))
        joules = [r.joules for r in runs]
        jpt.append(sum(joules) / dec_tokens if dec_tokens and all(j is not None for j in joules) else None)
    rounds = [rd for runs in trials for r in runs for rd in r.rounds]
    spec = [(k, a, s) for k, a, s in rounds if k > 0]
    tried, hits = position_counts(spec)
    rate, plain_rate, j = _median(rates), _median(_trial_rates(plain)), _median(jpt)
    return ModeResult(
        mode=mode,
        draft_tokens=draft_tokens,
        generated_tokens=sum(r.generated for r in trials[0]),
        ttft_s=_median(ttfts),
        decode_tokens_per_s=rate,
        trials_tokens_per_s=rates,
        speedup=rate / plain_rate if plain_rate else None,
        rounds=len(spec) // len(trials),
        mean_accepted_per_round=sum(a for _, a, _ in spec) / len(spec) if spec else None,
        accepted_histogram={str(n): c for n, c in sorted(Counter(a for _, a, _ in spec).items())},
        draft_tokens_histogram={str(k): c for k, c in sorted(Counter(k for k, _, _ in rounds).items())},
        acceptance_by_position=[h / t if t else None for t, h in zip(tried, hits)],
        peak_memory_bytes=max(r.peak_memory_bytes for runs in trials for r in runs),
        joules_per_token=j,
        tokens_per_joule=1 / j if j else None,
        ideal_tokens_per_s=ideal,
        loop_efficiency=rate / ideal if ideal and rate is not None else None,
        # Greedy decoding in every mode: any difference from plain is a bug worth shouting about.
        matches_plain=[[r.tokens for r in t] for t in trials] == [[r.tokens for r in t] for t in plain],
    )


# --- the protocol ------------------------------------------------------------------------
def measure_modes(
    bundle,
    prompts: Sequence[tuple[str, list[int]]],
    *,
    ks: Sequence[int] = tuple(range(1, MAX_DRAFT + 1)),
    max_tokens: int = 128,
    trials: int = 3,
    mlx_lm: bool = True,
    ignore_eos: bool = False,
    useless_drafter: bool = False,
    energy=None,
    blas: str = "",
    log: Callable[[str], None] = lambda line: None,
) -> BenchResult:
    """Benchmark every mode on `prompts`, [(name, prompt ids)], with a loaded (or in-memory) Bundle."""

    from ..calibrate import Policies
    from ..energy import EnergyTimeline, detect_energy_source

    if trials < 1:
        raise UsageError("--trials must be at least 1")
    if max_tokens < 2:
        raise UsageError("--max-tokens must be at least 2 (decode speed needs a token after the first)")
    if not prompts:
        raise SpecdecError("no prompts to run")
    energy = energy if energy is not None else detect_energy_source()
    modes: list[tuple[str, object]] = [("plain", 0)]
    if mlx_lm:
        modes.append(("mlx-lm", None))
    if bundle.drafter is not None:
        modes += [(f"k={k}", k) for k in ks] + [("auto", "auto")]
    elif ks:
        log("no drafter: running plain decoding (and mlx-lm) only")
    if useless_drafter:
        if bundle.drafter is None:
            raise UsageError("--useless-drafter needs a drafter")
        make_useless(bundle.drafter)

    stop_tokens = () if ignore_eos else None
    policies = Policies(bundle)  # this benchmark's: auto calibrates once, in the warm-up

    def one(draft_tokens, ids, n) -> Run:
        if draft_tokens is None:
            return run_mlx_lm(bundle, ids, n, ignore_eos)
        return run_specdec(bundle, ids, n, draft_tokens, stop_tokens, policies)

    runs: dict[str, list[list[Run]]] = {m: [] for m, _ in modes}
    for mode, dt in modes:  # warm-up: compile, allocate, and calibrate auto once
        log(f"warm-up {mode}")
        one(dt, prompts[0][1], min(max_tokens, 16))
    with EnergyTimeline(energy) as timeline:
        for t in range(trials):
            t0 = time.perf_counter()
            for mode, _ in modes:
                runs[mode].append([])
            for _, ids in prompts:  # prompt-major: every mode runs each prompt back to back
                for mode, dt in modes:
                    runs[mode][-1].append(one(dt, ids, max_tokens))
            log(f"trial {t + 1}/{trials}: {time.perf_counter() - t0:.1f} s")
    add_joules([r for trials_ in runs.values() for trial in trials_ for r in trial], timeline)

    ideal = None
    if "auto" in runs:
        own = [rd for trial in runs["auto"] for r in trial for rd in r.rounds]
        others = [rd for m, dt in modes if isinstance(dt, int) for trial in runs[m] for r in trial for rd in r.rounds]
        ideal = ideal_rate(own, others)
    results = [summarise_mode(m, dt, runs[m], runs["plain"], ideal if m == "auto" else None) for m, dt in modes]
    return BenchResult(
        **run_info(bundle.name, blas, energy.name),
        max_tokens=max_tokens,
        trials=trials,
        ignore_eos=ignore_eos,
        useless_drafter=useless_drafter,
        prompts=[PromptResult(name, len(ids)) for name, ids in prompts],
        modes=results,
        summary=BenchSummary.from_modes(results),
        numerics=bundle.numerics.to_json() if bundle.numerics else None,  # measured by the first run
    )


def run_bench(bundle, *, prompts: Sequence[dict] = SUITE, raw: bool = False, **kwargs) -> BenchResult:
    """Benchmark every mode on `prompts` ([{"name", "prompt"}], chat template unless `raw`); kwargs: measure_modes."""
    encoded = [(p["name"], encode_prompt(bundle, p["prompt"], raw)) for p in prompts]
    return measure_modes(bundle, encoded, **kwargs)
