"""Choosing the draft length k per round: fixed, or "auto" from measured acceptance and costs.

Model. Let a_i be the probability that draft i is accepted given drafts 1..i-1 were. A round
with k drafts yields E(k) = 1 + sum_{i<=k} prod_{j<=i} a_j tokens and costs C(k) (seconds:
one drafter step per draft plus a verify pass over k+1 tokens, plus fixed overhead; or joules
with `battery`, measured with the machine's energy counter). "auto" picks argmax_k E(k) / C(k),
k = 0 (plain decoding) included, so a drafter that does not pay is switched off.

Costs come from a one-off calibration (calibrate.py); only their ratios matter. Per-k online
corrections were tried and rejected: overheads outside the round made the chosen k look
dearer than untried ones and the policy wandered. Acceptance rates are running per-position
estimates with a weak prior (an untried position borrows the previous one's estimate) that fade
with age; while k = 0 wins, a one-draft probe keeps the estimate fresh, every `probe_every`
rounds at first and ever more rarely while probes fail.
"""

from __future__ import annotations

from collections.abc import Sequence

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
