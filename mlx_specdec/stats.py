"""The per-token record that the decode loop yields, and run statistics derived from it.

Everything downstream of the loop (CLI text and JSON, the chat UI, the benchmark) reads only
`TokenRecord`s and `RunStats`; none of it calls mlx.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Optional


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
    def from_records(cls, records: Iterable[TokenRecord]) -> "RunStats":
        records = list(records)
        if not records:
            return cls()
        # One entry per speculative round (round 0 is the prefill token, not a round).
        per_round = {}
        for r in records:
            if r.round > 0 and r.draft_tokens > 0:
                per_round[r.round] = (r.draft_tokens, r.accepted)
        drafted = sum(k for k, _ in per_round.values())
        accepted = sum(a for _, a in per_round.values())
        rounds = len(per_round)
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
            accepted_histogram=dict(sorted(Counter(a for _, a in per_round.values()).items())),
            finish_reason=last.finish_reason,
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["accepted_histogram"] = {str(k): v for k, v in self.accepted_histogram.items()}
        return d
