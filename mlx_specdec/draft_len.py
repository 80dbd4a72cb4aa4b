"""Choosing the draft length k per round: fixed, or "auto" from measured acceptance and costs.

Model. Let a_i be the probability that draft i is accepted given drafts 1..i-1 were. A round
with k drafts yields E(k) = 1 + sum_{i<=k} prod_{j<=i} a_j tokens and costs C(k) (seconds:
one drafter step per draft plus a verify pass over k+1 tokens, plus fixed overhead; or joules
with `battery`, measured with the machine's energy counter). "auto" picks argmax_k E(k) / C(k),
k = 0 (plain decoding) included, so a drafter that does not pay is switched off.

Costs come from a one-off calibration per bundle on a scratch cache: plain steps as the loop
queues them, and drafting rounds of 1..K drafts issued by the loop's own `decode.issue_round`,
so the chained drafter steps and the drafting that overlaps building the verify pass cost what
they cost in the loop (a drafter step timed alone pays a sync of its own, and made k = 1 look
no better than plain on the demo pair, where it runs at 1.07x). Only their ratios matter; per-k online
corrections were tried and rejected: overheads outside the round made the chosen k look
dearer than untried ones and the policy wandered. Acceptance rates are running per-position
estimates with a weak prior (an untried position borrows the previous one's estimate) that fade
with age; while k = 0 wins, a one-draft probe keeps the estimate fresh, every `probe_every`
rounds at first and ever more rarely while probes fail.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from .cache import PromptCache, drafter_kv, rewind
from .settings import MAX_DRAFT, DraftSetting
from .stats import tried_positions


def expected_tokens(acceptance: Sequence[float], k: int) -> float:
    """E(k) = 1 + sum_{i=1..k} prod_{j<=i} a_j: tokens a round with k drafts yields on average."""
    total, run = 1.0, 1.0
    for a in acceptance[:k]:
        run *= a
        total += run
    return total


def choose_k(acceptance: Sequence[float], cost: Sequence[float]) -> int:
    """The k in 0..len(cost)-1 that maximises expected_tokens(acceptance, k) / cost[k].

    acceptance[i]: conditional acceptance of draft i+1; cost[k]: cost of a round with k drafts.
    Ties go to the smaller k (less work for the same rate).
    """
    best, best_rate = 0, -1.0
    for k in range(len(cost)):
        rate = expected_tokens(acceptance, k) / cost[k]
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = k, rate
    return best


@dataclass(frozen=True)
class PassCosts:
    """What the passes of a round cost, measured on a scratch cache (`measure_passes`).

    verify:     verify[n - 1] is one target pass over n tokens, n = 1..max_k + 1.
    draft_step: one drafter step (logits' argmax and next hidden), None without a drafter.
    plain:      one plain step as the loop runs it: queued while the previous one is read.
    """

    verify: list[float]
    draft_step: Optional[float]
    plain: float


def _cost(fn, repeats: int, energy=None) -> float:
    """Seconds of fn(): the fastest of `repeats` after a warm-up; with `energy`, joules over
    `8 * repeats` runs divided by the count."""
    fn()  # warm-up (compilation, allocation)
    if energy is not None:
        runs = 8 * repeats
        e0 = energy.read()
        for _ in range(runs):
            fn()
        e1 = energy.read()
        return (e1 - e0) / runs
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def _scratch(bundle, max_k: int, context: int) -> tuple[PromptCache, mx.array]:
    """A scratch cache holding `context` positions, rewindable by a round of max_k drafts ->
    (cache, the target's hidden state [1, 1, H] at its last position)."""
    target = bundle.target
    pc = PromptCache(bundle, max_rewind=max(max_k + 1, 8))
    _, hidden = target(mx.arange(context)[None] % target.vocab_size, pc.cache)
    mx.eval(hidden, [c.state for c in pc.cache])
    return pc, hidden[:, -1:]


def measure_passes(bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None, drafter=None) -> PassCosts:
    """Time (or meter) the passes of a round on a scratch cache holding `context` positions.

    Seconds: the fastest of `repeats` after a warm-up (noise only ever adds time). With `energy`
    (an energy.EnergySource that reads): joules, the counter over `8 * repeats` runs of each pass
    divided by the count (counters tick too coarsely for one pass). `drafter` defaults to the
    bundle's (a wrapper such as the synthetic oracle passes the real one).
    """
    target, drafter = bundle.target, drafter if drafter is not None else bundle.drafter
    pc, h = _scratch(bundle, max_k, context)
    cache = pc.cache
    tok = mx.array([[1]])

    def cost(fn) -> float:
        return _cost(fn, repeats, energy)

    def verify(n):
        logits, hid = target(mx.zeros((1, n), dtype=mx.int32), cache)
        mx.eval(mx.argmax(logits, axis=-1), hid)
        rewind(cache, n)

    def plain_steps(n: int = 8):
        nxt = mx.argmax(target(tok, cache)[0][:, -1], axis=-1)
        mx.async_eval(nxt)
        for _ in range(n - 1):
            cur, nxt = nxt, mx.argmax(target(nxt.reshape(1, 1), cache)[0][:, -1], axis=-1)
            mx.async_eval(nxt)
            cur.item()
        nxt.item()
        rewind(cache, n)

    verify_cost = [cost(lambda n=n: verify(n)) for n in range(1, max_k + 2)]
    plain = cost(plain_steps) / 8
    step = None
    if drafter is not None:
        kv = drafter_kv(cache, target.kv_layers)

        def draft_step():
            logits, nh = drafter(target.embed(tok), h, kv, context)
            mx.eval(mx.argmax(logits, axis=-1), nh)

        step = cost(draft_step)
    return PassCosts(verify_cost, step, plain)


def measure_rounds(bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None) -> list[float]:
    """Cost of a greedy drafting round with k = 1..max_k drafts, issued as the loop issues it
    (`decode.issue_round`) and evaluated once, on a scratch cache holding `context` positions;
    seconds or joules as `measure_passes`."""
    from .decode import issue_round  # the loop's own round (decode imports this module)
    from .sampling import SamplingParams

    pc, h = _scratch(bundle, max_k, context)
    bonus, greedy = mx.array(1), SamplingParams()

    def one(k: int) -> None:
        drafts, n, nxt, verify_hidden, _ = issue_round(bundle, pc, bonus, h, k, greedy)
        mx.eval(n, nxt, drafts, verify_hidden)
        rewind(pc.cache, k + 1)

    return [_cost(lambda k=k: one(k), repeats, energy) for k in range(1, max_k + 1)]


def calibrate(bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None) -> list[float]:
    """Cost of a round with k = 0..max_k drafts (seconds, or joules with `energy`): k = 0 a
    plain step as the loop runs it, queued while the previous one is read (`measure_passes`),
    k >= 1 a drafting round as the loop issues it (`measure_rounds`).

    A round of more drafts never counts as cheaper than one of fewer: on a busy machine noise
    can say otherwise, and a policy that believes it drafts forever at no acceptance.
    """
    passes = measure_passes(bundle, 0, repeats, context, energy)
    plain = min(passes.verify[0], passes.plain)
    if bundle.drafter is None:
        return [plain]
    return list(itertools.accumulate([plain] + measure_rounds(bundle, max_k, repeats, context, energy), max))


class FixedPolicy:
    def __init__(self, k: int):
        self.k = k

    def choose(self, max_k: int) -> int:
        return min(self.k, max_k)

    def observe(self, k: int, accepted: int) -> None:
        pass


class AutoPolicy:
    """Per-round k maximising expected tokens per second (or per joule-proxy with `battery`)."""

    def __init__(
        self,
        cost: Sequence[float],
        prior_accept: float = 0.5,
        prior_weight: float = 2.0,
        probe_every: int = 32,
        memory: float = 0.98,
        max_probe_gap: int = 1024,
    ):
        self.cost = list(cost)
        self.max_k = len(cost) - 1
        self.prior_accept, self.prior_weight = prior_accept, prior_weight
        self.hits = [0.0] * self.max_k
        self.tries = [0.0] * self.max_k
        self.probe_every = probe_every
        self.probe_gap = probe_every  # doubles after each failed probe, back to probe_every on success
        self.max_probe_gap = max_probe_gap
        self.probing = False
        self.memory = memory  # per drafting round: old observations fade (~50 rounds)
        self.since_draft = 0

    @property
    def acceptance(self) -> list[float]:
        """Per-position estimates; an untried position borrows the previous position's estimate."""
        out, prior = [], self.prior_accept
        for h, t in zip(self.hits, self.tries):
            prior = (h + self.prior_weight * prior) / (t + self.prior_weight)
            out.append(prior)
        return out

    def choose(self, max_k: int) -> int:
        max_k = min(max_k, self.max_k)
        k = choose_k(self.acceptance[:max_k], self.cost[: max_k + 1])
        self.probing = k == 0 and max_k > 0 and self.since_draft >= self.probe_gap
        if self.probing:
            k = 1  # probe: one cheap draft keeps the acceptance estimate honest
        return k

    def observe(self, k: int, accepted: int) -> None:
        """A round proposed k drafts and the target accepted `accepted` of them."""
        self.since_draft = 0 if k else self.since_draft + 1
        if self.probing and k:  # a useless drafter is probed ever more rarely
            self.probe_gap = self.probe_every if accepted else min(2 * self.probe_gap, self.max_probe_gap)
            self.probing = False
        if k:
            self.hits = [h * self.memory for h in self.hits]
            self.tries = [t * self.memory for t in self.tries]
        for i in tried_positions(k, accepted):
            self.tries[i] += 1
            self.hits[i] += 1 if i < accepted else 0


def objective(battery: Optional[bool] = None):
    """("seconds", None) or ("joules", source): joules when asked to (or, with battery None,
    when running on battery) and an energy counter is readable; otherwise seconds."""
    from .energy import battery as battery_state
    from .energy import detect_energy_source

    if battery is None:
        state = battery_state()
        battery = bool(state and state.on_battery)
    if battery:
        source = detect_energy_source()
        if source.available and source.read() is not None:
            return "joules", source
    return "seconds", None


def make_policy(draft: DraftSetting, bundle, battery: Optional[bool] = None):
    """k -> FixedPolicy(k); "auto" -> AutoPolicy maximising tokens per second, or per joule
    with `battery` (None: automatic, on when the machine runs on battery and can meter energy).
    Without a drafter every policy decodes plainly. "auto" calibrates once per bundle: make the
    policy before a request's clock starts."""
    if bundle.drafter is None:
        return FixedPolicy(0)
    if draft != "auto":
        return FixedPolicy(int(draft))
    unit, source = objective(battery)
    # One policy per bundle and objective, calibrated once: what it learns about acceptance
    # carries over to the next request (a chat's next turn) instead of restarting from the prior.
    if unit not in bundle.auto_policies:
        bundle.auto_policies[unit] = AutoPolicy(calibrate(bundle, MAX_DRAFT, energy=source))
    return bundle.auto_policies[unit]
