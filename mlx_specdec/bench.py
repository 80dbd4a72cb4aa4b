"""`specdec bench`: plain vs mlx-lm vs speculative (fixed k and auto) on one prompt suite.

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
  mlx-lm   mlx-lm's own `stream_generate` on the same model object and prompt ids, greedy
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

Energy: whole-machine counters (energy.py) read at the first token and at the end of each
run, so joules cover decoding only, like tokens/s; null where no counter is readable.

JSON schema (`--json FILE`, `run_bench` returns the same dict):
{
  "schema": "specdec-bench/1",
  "model": str, "blas": str, "energy_source": str, "platform": str,
  "mlx_version": str, "mlx_lm_version": str,
  "max_tokens": int, "trials": int, "ignore_eos": bool, "useless_drafter": bool,
  "prompts": [{"name": str, "prompt_tokens": int}],
  "modes": [                                   # one entry per mode, in run order
    {"mode": "plain" | "mlx-lm" | "k=N" | "auto",
     "draft_tokens": 0 | N | "auto" | null,    # null for mlx-lm
     "generated_tokens": int,                  # per trial, all prompts (first tokens included)
     "ttft_s": float,                          # mean over prompts, median over trials
     "decode_tokens_per_s": float,             # median over trials
     "trials_tokens_per_s": [float],
     "speedup": float | null,                  # decode tokens/s / plain's
     "rounds": int,                            # per trial; rounds with k >= 1 (0 for plain/mlx-lm)
     "mean_accepted_per_round": float | null,  # over rounds with k >= 1; null if none
     "accepted_histogram": {"n": count},       # accepted drafts per round (k >= 1), all trials
     "draft_tokens_histogram": {"k": count},   # k per round (auto: what it chose), all trials
     "acceptance_by_position": [float | null], # 8 entries: P(draft i accepted | i tried)
     "peak_memory_bytes": int,
     "joules_per_token": float | null,         # decode joules / decode tokens, median
     "tokens_per_joule": float | null,
     "ideal_tokens_per_s": float | null,       # auto only (see above)
     "loop_efficiency": float | null,          # auto only
     "matches_plain": bool},                   # same token ids as plain on every prompt and trial
  ],
  "summary": {"plain_vs_mlx_lm": float | null, "auto_speedup": float | null,
              "best_fixed_k": int | null, "best_fixed_k_speedup": float | null,
              "loop_efficiency": float | null}
}
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

from .errors import SpecdecError
from .settings import GenerationSettings
from .stats import position_counts, rounds_from_records

SCHEMA = "specdec-bench/1"
MAX_K = 8

# The built-in suite: one prompt per kind of work people ask a small model for.
SUITE = [
    {"name": "chat", "prompt": "I have a free Saturday in a new city. Suggest a relaxed plan for the day, "
                               "with a café, a walk and somewhere to eat in the evening."},
    {"name": "code", "prompt": "Write a Python function `merge_intervals(intervals)` that merges overlapping "
                               "[start, end] intervals and returns them sorted. Include a docstring and two tests."},
    {"name": "json", "prompt": "Return only JSON: a list of three fictional employees, each with the fields "
                               "name, age, department, email and a list of skills."},
    {"name": "summarise", "prompt": "Summarise in three bullet points: The city council met on Tuesday to "
                                    "discuss the new cycling lanes. Supporters said the lanes cut accidents by a "
                                    "third in the pilot district and brought more customers to local shops. "
                                    "Opponents worried about fewer parking spaces and delivery access. The council "
                                    "voted 7-4 to extend the lanes to two more districts next spring, with loading "
                                    "bays every 200 metres and a review after one year."},
]

MODE_KEYS = (
    "mode", "draft_tokens", "generated_tokens", "ttft_s", "decode_tokens_per_s", "trials_tokens_per_s",
    "speedup", "rounds", "mean_accepted_per_round", "accepted_histogram", "draft_tokens_histogram",
    "acceptance_by_position", "peak_memory_bytes", "joules_per_token", "tokens_per_joule",
    "ideal_tokens_per_s", "loop_efficiency", "matches_plain",
)


# --- inputs ------------------------------------------------------------------------------
def load_prompts(path: Union[str, Path]) -> list[dict]:
    """JSONL file, one {"prompt": str[, "name": str]} per line -> [{"name", "prompt"}]."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise SpecdecError(f"{path}: no such prompts file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SpecdecError(f"{path}: cannot read ({e})") from None
    prompts = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            raise SpecdecError(f'{path}:{n}: not valid JSON; expected one {{"prompt": "..."}} object per line') from None
        if not isinstance(item, dict) or not isinstance(item.get("prompt"), str) or not item["prompt"]:
            raise SpecdecError(f'{path}:{n}: expected an object with a non-empty string "prompt"')
        prompts.append({"name": str(item.get("name", f"prompt{len(prompts) + 1}")), "prompt": item["prompt"]})
    if not prompts:
        raise SpecdecError(f"{path}: no prompts (expected JSONL lines like {{\"prompt\": \"...\"}})")
    return prompts


def parse_k_list(text: str) -> list[int]:
    """"1,2,4" -> [1, 2, 4]; each in 1..8."""
    try:
        ks = sorted({int(t) for t in text.replace(" ", "").split(",") if t})
    except ValueError:
        raise SpecdecError(f"--k must be comma-separated numbers 1-{MAX_K}, not {text!r}") from None
    if any(not 1 <= k <= MAX_K for k in ks):
        raise SpecdecError(f"--k values must be between 1 and {MAX_K}, not {text!r}")
    return ks


def encode_prompt(bundle, prompt: str, raw: bool = False) -> list[int]:
    from .prompt import chat_ids, text_ids

    return text_ids(bundle.tokenizer, prompt) if raw else chat_ids(bundle.tokenizer, [{"role": "user", "content": prompt}])


def make_useless(drafter, seed: int = 0) -> None:
    """Shuffle every drafter tensor's elements in place (seeded): same shapes, no knowledge.

    A drafter that keeps its cost but proposes near-random tokens: the case where `auto` must
    fall back to plain decoding. (token_ordering stays a permutation of the vocabulary.)
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten, tree_unflatten

    params = tree_flatten(drafter.parameters())
    keys = mx.random.split(mx.random.key(seed), len(params))
    shuffled = []
    for (name, p), key in zip(params, keys):
        perm = mx.random.permutation(p.size, key=key)
        shuffled.append((name, p.reshape(-1)[perm].reshape(p.shape)))
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
    joules: Optional[float] = None
    tokens: list = field(default_factory=list)


def run_specdec(bundle, ids, max_tokens: int, draft_tokens, energy, stop_tokens=None) -> Run:
    import mlx.core as mx

    from .decode import stream_generate
    from .draft_len import make_policy

    policy = make_policy(draft_tokens, bundle)  # auto: calibrated once per bundle, outside the run
    mx.reset_peak_memory()
    records, e0 = [], None
    settings = GenerationSettings(max_tokens=max_tokens, draft=draft_tokens)
    for r in stream_generate(bundle, ids, settings, policy=policy, stop_tokens=stop_tokens):
        if not records:
            e0 = energy.read()
        records.append(r)
    e1 = energy.read()
    last = records[-1]
    return Run(
        generated=len(records), ttft_s=records[0].ttft_s, decode_tokens=len(records) - 1, decode_s=last.elapsed_s,
        rounds=rounds_from_records(records), peak_memory_bytes=int(mx.get_peak_memory()),
        joules=e1 - e0 if e0 is not None and e1 is not None else None, tokens=[r.token for r in records],
    )


def run_mlx_lm(bundle, ids, max_tokens: int, energy, ignore_eos: bool = False) -> Run:
    """mlx-lm's own greedy `stream_generate` on the same model object and prompt ids."""
    import copy

    import mlx.core as mx
    from mlx_lm.generate import stream_generate as lm_stream_generate

    tokenizer = bundle.tokenizer
    if ignore_eos:  # mlx-lm stops on the wrapper's EOS ids: give it a copy without them
        tokenizer = copy.copy(tokenizer)
        tokenizer.eos_token_ids = set()

    mx.reset_peak_memory()
    t0 = time.perf_counter()
    n, t_first, t_last, e0, tokens = 0, 0.0, 0.0, None, []
    for response in lm_stream_generate(bundle.target.model, tokenizer, mx.array(ids), max_tokens=max_tokens):
        t_last = time.perf_counter()
        tokens.append(int(response.token))
        if n == 0:
            t_first, e0 = t_last, energy.read()
        n += 1
    e1 = energy.read()
    return Run(
        generated=n, ttft_s=t_first - t0, decode_tokens=n - 1, decode_s=t_last - t_first,
        peak_memory_bytes=int(mx.get_peak_memory()), joules=e1 - e0 if e0 is not None and e1 is not None else None,
        tokens=tokens,
    )


# --- summary -----------------------------------------------------------------------------
def ideal_rate(own_rounds, other_rounds) -> Optional[float]:
    """max_k E(k)/C(k): acceptance and costs from `own_rounds`, gaps filled from `other_rounds`.

    Rounds are (k, accepted, seconds). See the module docstring (loop efficiency).
    """
    from .draft_len import expected_tokens

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


def summarise_mode(mode: str, draft_tokens, trials: list[list[Run]]) -> dict:
    """Runs of one mode (trials x prompts) -> the mode's JSON entry (ideal/efficiency/speedup added later)."""
    rates, ttfts, jpt = [], [], []
    for runs in trials:
        dec_tokens = sum(r.decode_tokens for r in runs)
        dec_s = sum(r.decode_s for r in runs)
        rates.append(dec_tokens / dec_s if dec_s > 0 else 0.0)
        ttfts.append(sum(r.ttft_s for r in runs) / len(runs))
        joules = [r.joules for r in runs]
        jpt.append(sum(joules) / dec_tokens if dec_tokens and all(j is not None for j in joules) else None)
    rounds = [rd for runs in trials for r in runs for rd in r.rounds]
    spec = [(k, a, s) for k, a, s in rounds if k > 0]
    tried, hits = position_counts(spec)
    hist = {str(n): c for n, c in sorted(Counter(a for _, a, _ in spec).items())}
    khist = {str(k): c for k, c in sorted(Counter(k for k, _, _ in rounds).items())}
    j = _median(jpt)
    return {
        "mode": mode,
        "draft_tokens": draft_tokens,
        "generated_tokens": sum(r.generated for r in trials[0]),
        "ttft_s": _median(ttfts),
        "decode_tokens_per_s": _median(rates),
        "trials_tokens_per_s": rates,
        "speedup": None,
        "rounds": len(spec) // len(trials),
        "mean_accepted_per_round": sum(a for _, a, _ in spec) / len(spec) if spec else None,
        "accepted_histogram": hist,
        "draft_tokens_histogram": khist,
        "acceptance_by_position": [h / t if t else None for t, h in zip(tried, hits)],
        "peak_memory_bytes": max(r.peak_memory_bytes for runs in trials for r in runs),
        "joules_per_token": j,
        "tokens_per_joule": 1 / j if j else None,
        "ideal_tokens_per_s": None,
        "loop_efficiency": None,
        "matches_plain": None,
    }


def run_bench(
    bundle,
    *,
    prompts: Sequence[dict] = SUITE,
    ks: Sequence[int] = tuple(range(1, MAX_K + 1)),
    max_tokens: int = 128,
    trials: int = 3,
    mlx_lm: bool = True,
    ignore_eos: bool = False,
    raw: bool = False,
    useless_drafter: bool = False,
    energy=None,
    blas: str = "",
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Benchmark every mode on `prompts` -> the JSON summary documented in the module docstring."""
    import mlx.core as mx
    from mlx_lm import __version__ as mlx_lm_version

    from .energy import detect_energy_source

    if trials < 1:
        raise SpecdecError("--trials must be at least 1")
    if max_tokens < 2:
        raise SpecdecError("--max-tokens must be at least 2 (decode speed needs a token after the first)")
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
            raise SpecdecError("--useless-drafter needs a drafter")
        make_useless(bundle.drafter)
    encoded = [(p["name"], encode_prompt(bundle, p["prompt"], raw)) for p in prompts]

    stop_tokens = () if ignore_eos else None

    def one(draft_tokens, ids, n) -> Run:
        if draft_tokens is None:
            return run_mlx_lm(bundle, ids, n, energy, ignore_eos)
        return run_specdec(bundle, ids, n, draft_tokens, energy, stop_tokens)

    runs: dict[str, list[list[Run]]] = {m: [] for m, _ in modes}
    for mode, dt in modes:  # warm-up: compile, allocate, and calibrate auto once
        log(f"warm-up {mode}")
        one(dt, encoded[0][1], min(max_tokens, 16))
    for t in range(trials):
        t0 = time.perf_counter()
        for mode, _ in modes:
            runs[mode].append([])
        for name, ids in encoded:  # prompt-major: every mode runs each prompt back to back
            for mode, dt in modes:
                runs[mode][-1].append(one(dt, ids, max_tokens))
        log(f"trial {t + 1}/{trials}: {time.perf_counter() - t0:.1f} s")

    entries = [summarise_mode(m, dt, runs[m]) for m, dt in modes]
    by_mode = {e["mode"]: e for e in entries}
    plain_rate = by_mode["plain"]["decode_tokens_per_s"]
    plain_tokens = [[r.tokens for r in trial] for trial in runs["plain"]]
    for e in entries:
        e["speedup"] = e["decode_tokens_per_s"] / plain_rate if plain_rate else None
        # Greedy decoding in every mode: any difference from plain is a bug worth shouting about.
        e["matches_plain"] = [[r.tokens for r in trial] for trial in runs[e["mode"]]] == plain_tokens
    if "auto" in by_mode:
        own = [rd for trial in runs["auto"] for r in trial for rd in r.rounds]
        others = [rd for m, dt in modes if isinstance(dt, int) for trial in runs[m] for r in trial for rd in r.rounds]
        ideal = ideal_rate(own, others)
        auto = by_mode["auto"]
        auto["ideal_tokens_per_s"] = ideal
        auto["loop_efficiency"] = auto["decode_tokens_per_s"] / ideal if ideal else None

    fixed_entries = [e for e in entries if e["mode"].startswith("k=")]
    best = max(fixed_entries, key=lambda e: e["decode_tokens_per_s"]) if fixed_entries else None
    lm = by_mode.get("mlx-lm")
    return {
        "schema": SCHEMA,
        "model": bundle.name,
        "blas": blas,
        "energy_source": energy.name,
        "platform": f"{platform.system()} {platform.machine()}",
        "mlx_version": mx.__version__,
        "mlx_lm_version": mlx_lm_version,
        "max_tokens": max_tokens,
        "trials": trials,
        "ignore_eos": ignore_eos,
        "useless_drafter": useless_drafter,
        "prompts": [{"name": name, "prompt_tokens": len(ids)} for name, ids in encoded],
        "modes": entries,
        "summary": {
            "plain_vs_mlx_lm": plain_rate / lm["decode_tokens_per_s"] if lm and lm["decode_tokens_per_s"] else None,
            "auto_speedup": by_mode["auto"]["speedup"] if "auto" in by_mode else None,
            "best_fixed_k": best["draft_tokens"] if best else None,
            "best_fixed_k_speedup": best["speedup"] if best else None,
            "loop_efficiency": by_mode["auto"]["loop_efficiency"] if "auto" in by_mode else None,
        },
    }


# --- output ------------------------------------------------------------------------------
def _fmt(x, spec: str, none: str = "n/a") -> str:
    return none if x is None else format(x, spec)


def render_table(result: dict):
    """The summary as a Rich table."""
    from rich.table import Table

    title = (f"specdec bench: {result['model']}, {len(result['prompts'])} prompts x {result['max_tokens']} tokens, "
             f"median of {result['trials']}{', useless drafter' if result['useless_drafter'] else ''}")
    table = Table(title=title, caption=f"BLAS: {result['blas'] or 'n/a'} | energy: {result['energy_source']}")
    columns = ("mode", "TTFT ms", "tok/s", "vs plain", "acc/rnd", "accepted hist.", "MiB", "J/tok", "eff.", "exact")
    for col in columns:
        table.add_column(col, justify="left" if col in ("mode", "accepted hist.") else "right", overflow="fold")
    for e in result["modes"]:
        hist = " ".join(f"{k}:{v}" for k, v in e["accepted_histogram"].items())
        table.add_row(
            e["mode"], _fmt(e["ttft_s"] and e["ttft_s"] * 1000, ".0f"), _fmt(e["decode_tokens_per_s"], ".1f"),
            _fmt(e["speedup"], ".2f", "") + ("x" if e["speedup"] is not None else ""),
            _fmt(e["mean_accepted_per_round"], ".2f", "-"), hist or "-",
            f"{e['peak_memory_bytes'] / 2**20:.0f}", _fmt(e["joules_per_token"], ".3f"),
            _fmt(e["loop_efficiency"], ".2f", ""), "yes" if e["matches_plain"] else "NO",
        )
    return table


def summary_line(result: dict) -> str:
    s = result["summary"]
    parts = []
    if s["plain_vs_mlx_lm"] is not None:
        parts.append(f"plain/mlx-lm {s['plain_vs_mlx_lm']:.2f}x")
    if s["auto_speedup"] is not None:
        parts.append(f"auto {s['auto_speedup']:.2f}x plain")
    if s["best_fixed_k"] is not None:
        parts.append(f"best fixed k={s['best_fixed_k']} {s['best_fixed_k_speedup']:.2f}x")
    if s["loop_efficiency"] is not None:
        parts.append(f"loop efficiency {s['loop_efficiency']:.2f}")
    differ = [e["mode"] for e in result["modes"] if not e["matches_plain"]]
    if differ:
        parts.append("OUTPUT DIFFERS FROM PLAIN: " + ", ".join(differ))
    auto = next((e for e in result["modes"] if e["mode"] == "auto"), None)
    if auto:
        parts.append("auto chose k " + " ".join(f"{k}:{v}" for k, v in auto["draft_tokens_histogram"].items()))
    return ", ".join(parts)


def curve(result: dict) -> list[tuple[str, float, Optional[float]]]:
    """(label, tokens/s, tokens/J) for plain (k=0), each fixed k, and auto, in that order."""
    out = []
    for e in result["modes"]:
        if e["mode"] == "mlx-lm":
            continue
        label = "0" if e["mode"] == "plain" else e["mode"].removeprefix("k=")
        out.append((label, e["decode_tokens_per_s"] or 0.0, e["tokens_per_joule"]))
    return out


def terminal_chart(result: dict, width: int = 40) -> str:
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


def write_plot(result: dict, path: Union[str, Path]) -> None:
    """PNG: tokens/s (top) and tokens/J (bottom, when measured) against k, bars, labelled."""
    rows = curve(result)
    panels = [("TOK/S", [r[1] for r in rows])]
    if all(r[2] is not None for r in rows):
        panels.append(("TOK/J", [r[2] for r in rows]))
    bar_w, gap, left, ph = 44, 12, 60, 220
    w = left + len(rows) * (bar_w + gap) + 20
    c = Canvas(w, len(panels) * (ph + 50) + 10)
    colours = [(66, 133, 244), (52, 168, 83)]
    for p, (name, values) in enumerate(panels):
        y0 = 10 + p * (ph + 50)
        base = y0 + ph
        top = max(values) or 1.0
        c.text(4, y0, name, (0, 0, 0))
        c.rect(left - 2, y0, 1, ph, (0, 0, 0))
        c.rect(left - 2, base, w - left - 10, 1, (0, 0, 0))
        for i, (label, v) in enumerate(zip((r[0] for r in rows), values)):
            x = left + i * (bar_w + gap)
            h = round((ph - 20) * v / top)
            colour = (234, 67, 53) if label == "auto" else colours[p]
            c.rect(x, base - h, bar_w, h, colour)
            c.text(x, base - h - 13, f"{v:.1f}" if v < 1000 else f"{v:.0f}", (0, 0, 0))
            c.text(x + 2, base + 6, "K=" + label if label != "auto" else "AUTO", (0, 0, 0))
    Path(path).write_bytes(c.png())


# --- a minimal PNG canvas (no plotting dependency) ---------------------------------------
_FONT = {  # 3x5 glyphs, rows top to bottom
    "0": "111101101101111", "1": "010110010010111", "2": "111001111100111", "3": "111001111001111",
    "4": "101101111001001", "5": "111100111001111", "6": "111100111101111", "7": "111001001001001",
    "8": "111101111101111", "9": "111101111001111", ".": "000000000000010", "=": "000111000111000",
    "/": "001001010100100", "-": "000000111000000", " ": "000000000000000", "K": "101101110101101",
    "A": "010101111101101", "U": "101101101101111", "T": "111010010010010", "O": "111101101101111",
    "S": "111100111001111", "J": "001001001101111", "N": "110101101101101",
}


class Canvas:
    """An RGB image with filled rectangles and a 3x5 pixel font, written as PNG with zlib."""

    def __init__(self, width: int, height: int, background=(255, 255, 255)):
        self.width, self.height = width, height
        self.pixels = [bytearray(bytes(background) * width) for _ in range(height)]

    def rect(self, x: int, y: int, w: int, h: int, colour) -> None:
        x0, x1 = max(0, x), min(self.width, x + w)
        for row in self.pixels[max(0, y) : max(0, min(self.height, y + h))]:
            row[3 * x0 : 3 * x1] = bytes(colour) * (x1 - x0)

    def text(self, x: int, y: int, s: str, colour, scale: int = 2) -> None:
        for ch in s.upper():
            glyph = _FONT.get(ch, _FONT[" "])
            for i, bit in enumerate(glyph):
                if bit == "1":
                    self.rect(x + (i % 3) * scale, y + (i // 3) * scale, scale, scale, colour)
            x += 4 * scale

    def png(self) -> bytes:
        import struct
        import zlib

        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        raw = b"".join(b"\x00" + bytes(row) for row in self.pixels)  # filter type 0 per row
        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)  # 8-bit RGB
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) + chunk(b"IEND", b"")
