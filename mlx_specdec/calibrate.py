"""What the passes of a round cost on this machine, and the draft-length policies built on them.

Costs come from a one-off calibration per bundle on a scratch cache: plain steps as the loop
queues them, and drafting rounds of 1..K drafts issued by the loop's own `round.issue_round`,
so the chained drafter steps and the drafting that overlaps building the verify pass cost what
they cost in the loop (a drafter step timed alone pays a sync of its own, and made k = 1 look
no better than plain on the demo pair, where it runs at 1.07x). The maths and the policies
themselves are in draft_len.py.

The policy is owned by whoever runs requests (a chat session, the server's worker, a bench run):
`Policies` keeps one calibrated "auto" policy per objective, so what it learns about acceptance
carries over to the next request instead of restarting from the prior.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from .cache import PromptCache, drafter_kv, rewind
from .draft_len import AutoPolicy, FixedPolicy
from .energy import BatchedSource, EnergyTimeline
from .round import issue_round
from .settings import MAX_DRAFT, DraftSetting, SamplingParams


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
    """Seconds of fn(): the fastest of `repeats` after a warm-up; with `energy` (a counter that
    reads at once, such as RAPL), joules over `8 * repeats` runs divided by the count."""
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


def _plain_steps(bundle, pc: PromptCache, n: int = 8) -> None:
    """n plain steps as the loop runs them, each queued while the previous one is read."""
    target, tok = bundle.target, mx.array([[1]])
    nxt = mx.argmax(target(tok, pc.cache)[0][:, -1], axis=-1)
    mx.async_eval(nxt)
    for _ in range(n - 1):
        cur, nxt = nxt, mx.argmax(target(nxt.reshape(1, 1), pc.cache)[0][:, -1], axis=-1)
        mx.async_eval(nxt)
        cur.item()
    nxt.item()
    rewind(pc.cache, n)


def _verify(bundle, pc: PromptCache, n: int) -> None:
    """One target pass over n tokens, evaluated, then rewound."""
    logits, hidden = bundle.target(mx.zeros((1, n), dtype=mx.int32), pc.cache)
    mx.eval(mx.argmax(logits, axis=-1), hidden)
    rewind(pc.cache, n)


def measure_passes(bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None, drafter=None) -> PassCosts:
    """Time (or meter) the passes of a round on a scratch cache holding `context` positions.

    Seconds: the fastest of `repeats` after a warm-up (noise only ever adds time). With `energy`
    (an energy.EnergySource that reads): joules, the counter over `8 * repeats` runs of each pass
    divided by the count (counters tick too coarsely for one pass). `drafter` defaults to the
    bundle's (a wrapper such as the synthetic oracle passes the real one).
    """
    target, drafter = bundle.target, drafter if drafter is not None else bundle.drafter
    pc, h = _scratch(bundle, max_k, context)
    verify = [_cost(lambda n=n: _verify(bundle, pc, n), repeats, energy) for n in range(1, max_k + 2)]
    plain = _cost(lambda: _plain_steps(bundle, pc), repeats, energy) / 8
    step = None
    if drafter is not None:
        kv, tok = drafter_kv(pc.cache, target.kv_layers), mx.array([[1]])

        def draft_step():
            logits, nh = drafter(target.embed(tok), h, kv, context)
            mx.eval(mx.argmax(logits, axis=-1), nh)

        step = _cost(draft_step, repeats, energy)
    return PassCosts(verify, step, plain)


def measure_rounds(bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None) -> list[float]:
    """Cost of a greedy drafting round with k = 1..max_k drafts, issued as the loop issues it
    (`round.issue_round`) and evaluated once, on a scratch cache holding `context` positions;
    seconds or joules as `measure_passes`."""
    pc, h = _scratch(bundle, max_k, context)
    bonus, greedy = mx.array(1), SamplingParams()

    def one(k: int) -> None:
        issued = issue_round(bundle, pc, bonus, h, k, greedy)
        mx.eval(issued.outputs, issued.hidden)
        rewind(pc.cache, k + 1)

    return [_cost(lambda k=k: one(k), repeats, energy) for k in range(1, max_k + 1)]


def calibrate(
    bundle, max_k: int, repeats: int = 5, context: int = 32, energy=None, clock=time.perf_counter
) -> list[float]:
    """Cost of a round with k = 0..max_k drafts (seconds, or joules with `energy`): k = 0 a
    plain step (the cheaper of a lone pass and a step queued as the loop queues it), k >= 1 a
    drafting round as the loop issues it (`measure_rounds`).

    A round of more drafts never counts as cheaper than one of fewer: on a busy machine noise
    can say otherwise, and a policy that believes it drafts forever at no acceptance.

    Apple's counters (a `BatchedSource`) publish about every 2 s, far coarser than the few
    passes one cost takes: two reads around them say 0 J or a whole batch, and waiting a full
    period for each of the costs would take half a minute. There the rounds are timed and their
    joules are those seconds times the mean power the counter measured while they ran
    (`EnergyTimeline`; one wait for a publication at the end), so the per-joule choice equals
    the per-second one; a counter that reads at once (RAPL) meters each cost on its own.
    """
    if isinstance(energy, BatchedSource):
        with EnergyTimeline(energy, clock=clock) as timeline:
            t0 = clock()
            seconds = calibrate(bundle, max_k, repeats, context)
            t1 = clock()
        joules = timeline.joules(t0, t1)
        return [c * joules / (t1 - t0) for c in seconds] if joules and t1 > t0 else seconds
    pc, _ = _scratch(bundle, 0, context)
    lone = _cost(lambda: _verify(bundle, pc, 1), repeats, energy)
    plain = min(lone, _cost(lambda: _plain_steps(bundle, pc), repeats, energy) / 8)
    if bundle.drafter is None:
        return [plain]
    return list(itertools.accumulate([plain] + measure_rounds(bundle, max_k, repeats, context, energy), max))


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
    """k -> FixedPolicy(k); "auto" -> a freshly calibrated AutoPolicy maximising tokens per
    second, or per joule with `battery` (None: automatic, on when the machine runs on battery and
    can meter energy). Without a drafter every policy decodes plainly. Make the policy before a
    request's clock starts; to keep one across requests, use `Policies`."""
    return Policies(bundle).get(draft, battery)


class Policies:
    """The draft-length policies of one bundle, kept by whoever runs its requests: "auto" is
    calibrated once per objective ("seconds" | "joules") and learns across requests."""

    def __init__(self, bundle):
        self.bundle = bundle
        self._auto: dict[str, AutoPolicy] = {}

    def get(self, draft: DraftSetting, battery: Optional[bool] = None):
        if self.bundle.drafter is None:
            return FixedPolicy(0)
        if draft != "auto":
            return FixedPolicy(int(draft))
        unit, source = objective(battery)
        if unit not in self._auto:
            self._auto[unit] = AutoPolicy(calibrate(self.bundle, MAX_DRAFT, energy=source))
        return self._auto[unit]

    @property
    def objectives(self) -> list[str]:
        """The objectives an auto policy has been calibrated for."""
        return list(self._auto)
