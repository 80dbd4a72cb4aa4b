"""The per-token record that the decode loop yields, and run statistics derived from it.

Everything downstream of the loop (CLI text and JSON, the chat UI, the benchmark) reads only
`TokenRecord`s and `RunStats`; none of it calls mlx.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple, Optional

from .settings import MAX_DRAFT


@dataclass(frozen=True)
class Round:
    """One round of the loop (decode.rounds yields these).

    position: index in prompt + output of the round's input token x_p (the previous bonus token).
    drafted:  the k tokens the drafter proposed (empty for a plain round).
    accepted: how many of them the target accepted (a prefix).
    bonus:    the target's own next token, from the first unaccepted verify row.
    seconds:  host time from the round's start to its tokens being known (a plain round issued
              ahead, while the previous one was read, started earlier).
    The round adds accepted + 1 tokens: drafted[:accepted], then bonus.
    """

    position: int
    drafted: tuple[int, ...]
    accepted: int
    bonus: int
    seconds: float

    @property
    def k(self) -> int:
        return len(self.drafted)

    @property
    def tokens(self) -> list[int]:
        return list(self.drafted[: self.accepted]) + [self.bonus]

    def trace(self) -> dict:
        """The `--trace` entry: {"position", "drafted", "accepted"}."""
        return {"position": self.position, "drafted": list(self.drafted), "accepted": self.accepted}


@dataclass(frozen=True)
class TokenRecord:
    """One generated token.

    token:        token id.
    text:         the text this token adds to the output (may be "" while a multi-byte
                  character is incomplete).
    from_draft:   True when the token is an accepted draft, False for the target's own
                  (bonus) token.
    round:        index of the round that produced it (round 0 is the prefill's token).
    draft_tokens: k, the number of drafts proposed in that round (0 for plain decoding).
    accepted:     how many of those k drafts the target accepted.
    prompt_tokens: tokens prefilled for this request (only the new ones with a reused cache).
    ttft_s:       seconds from the request to the first token.
    elapsed_s:    seconds from the first token to this one.
    peak_memory_bytes: peak memory so far (0 where the backend cannot tell).
    finish_reason: None, or on the last record "stop" (EOS / stop string) or "length".
    round_info:   on the first token of each round, that round's `Round` (None on the others
                  and on the prefill's token).
    """

    token: int
    text: str
    from_draft: bool
    round: int
    draft_tokens: int
    accepted: int
    prompt_tokens: int
    ttft_s: float
    elapsed_s: float
    peak_memory_bytes: int = 0
    finish_reason: Optional[str] = None
    round_info: Optional[Round] = None


class HostWait:
    """An optional probe of the loop (`decode.rounds(..., host_wait=HostWait())`): per round, the
    host time from the previous round's sync returning to this round's first work being handed to
    the device (graph building, host reads, the caller's own time between rounds): the device idles
    at least that long. A drafting round's first work is its drafts, a plain round's its first
    layers (models/target.py issue_early); a plain round queued and handed over before the previous
    sync counts 0. The host goes on building while the device computes: a wait after the first
    hand-off (a host slower than the device) is not in it, but shows in the loop's efficiency.
    """

    def __init__(self):
        self.waits: list[float] = []  # seconds, one per round
        self._synced = time.perf_counter()

    def before_sync(self, handed_at: Optional[float]) -> None:
        """The round's first hand-off (None: none before the sync) -> one wait."""
        handed = time.perf_counter() if handed_at is None else handed_at
        self.waits.append(max(0.0, handed - self._synced))

    def after_sync(self) -> None:
        self._synced = time.perf_counter()


class RoundStat(NamedTuple):
    """A round as rebuilt from its records: k drafts, accepted, and seconds between the
    round's last token and the previous round's last token."""

    k: int
    accepted: int
    seconds: float


def rounds_from_records(records: Iterable[TokenRecord]) -> list[RoundStat]:
    """Records -> one RoundStat per round after the prefill; a round ends at its last token.
    This is the one place rounds are rebuilt from records (stats, bench and UI use it)."""
    ends: dict[int, tuple[int, int, float]] = {}
    for r in records:
        ends[r.round] = (r.draft_tokens, r.accepted, r.elapsed_s)
    out, prev = [], ends.get(0, (0, 0, 0.0))[2]
    for rnd in sorted(ends):
        if rnd == 0:
            continue
        k, acc, t = ends[rnd]
        out.append(RoundStat(k, acc, t - prev))
        prev = t
    return out


def tried_positions(k: int, accepted: int) -> range:
    """Draft positions (0-based) that were tried in a round: draft i+1 is tried iff drafts
    1..i were accepted, so positions 0..min(k, accepted + 1) - 1."""
    return range(min(k, accepted + 1))


def position_counts(rounds: Sequence) -> tuple[list[int], list[int]]:
    """(tried, accepted) per draft position 1..MAX_DRAFT over rounds (k, accepted, ...)."""
    tried, hits = [0] * MAX_DRAFT, [0] * MAX_DRAFT
    for k, acc, *_ in rounds:
        for i in tried_positions(k, acc):
            tried[i] += 1
            hits[i] += i < acc
    return tried, hits


@dataclass
class RunStats:
    """Summary of one generation, computed from its records."""

    prompt_tokens: int = 0
    generated_tokens: int = 0
    rounds: int = 0
    drafted: int = 0
    accepted: int = 0
    mean_accepted_per_round: float = 0.0
    acceptance_rate: float = 0.0
    ttft_s: float = 0.0
    decode_tokens_per_s: float = 0.0
    peak_memory_bytes: int = 0
    accepted_histogram: dict = field(default_factory=dict)
    finish_reason: Optional[str] = None

    @classmethod
    def from_records(cls, records: Iterable[TokenRecord]) -> RunStats:
        records = list(records)
        if not records:
            return cls()
        spec = [r for r in rounds_from_records(records) if r.k > 0]  # speculative rounds only
        drafted = sum(r.k for r in spec)
        accepted = sum(r.accepted for r in spec)
        rounds = len(spec)
        last = records[-1]
        # Decode speed excludes the first token (it is the prefill's).
        decode_s = last.elapsed_s
        n_decode = len(records) - 1
        return cls(
            prompt_tokens=records[0].prompt_tokens,
            generated_tokens=len(records),
            rounds=rounds,
            drafted=drafted,
            accepted=accepted,
            mean_accepted_per_round=accepted / rounds if rounds else 0.0,
            acceptance_rate=accepted / drafted if drafted else 0.0,
            ttft_s=records[0].ttft_s,
            decode_tokens_per_s=n_decode / decode_s if decode_s > 0 and n_decode > 0 else 0.0,
            peak_memory_bytes=max(r.peak_memory_bytes for r in records),
            accepted_histogram=dict(sorted(Counter(r.accepted for r in spec).items())),
            finish_reason=last.finish_reason,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accepted_histogram"] = {str(k): v for k, v in self.accepted_histogram.items()}
        return d
