"""Which pass widths round alike on this device: the records of the numerics probe (probe.py).

Greedy speculative output equals plain output only if a row of the target's output does not depend
on how many rows its pass computed: a verify computes position p + j as row j of k + 1 rows, plain
decoding as the only row of its own pass. MLX's CPU backend gives the same row whatever the block
height; Metal chooses other kernels for 1 row, for a few, and for many (DESIGN.md), each reducing
in its own order. The probe measures this for a loaded bundle on the device it runs on; the loop
then runs every pass whose row the user sees at a width inside the class that agrees (`Widths`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .settings import MAX_DRAFT

EXACTNESS = ("strict", "relaxed")


@dataclass(frozen=True)
class Widths:
    """Pass widths (rows per target pass) the loop uses.

    plain:     rows of a plain step's pass (the prefill's last token too); the extra rows repeat the
               token and are dropped at once. A verify is never narrower than this either.
    max_draft: the most drafts a round may propose: a verify is never wider than max_draft + 1.
    """

    plain: int = 1
    max_draft: int = MAX_DRAFT


@dataclass(frozen=True)
class Difference:
    """One operation whose rows depend on the pass width.

    op:     "quantized_matmul", "matmul", "gather_qmm", "gather_mm" or "attention".
    shape:  what was run, e.g. "1536->2048 4-bit group 64" or "8 heads / 1 KV head x 512, 64 keys".
    widths: the widths whose rows differ from the same rows computed one at a time.
    """

    op: str
    shape: str
    widths: list[int]

    def line(self) -> str:
        return f"{self.op} {self.shape}: rows differ at widths {_ranges(self.widths)}"


@dataclass(frozen=True)
class Verdict:
    """What the probe found for one bundle on one device.

    exact:            a configuration exists where every pass runs inside one agreeing class.
    plain_width:      the width plain steps run at (1 when single rows agree with verifies).
    max_draft_tokens: the largest k such that widths plain_width .. k + 1 all agree (0: none).
    agree:            the widths that agree with plain steps at plain_width.
    differs:          the operations whose rows depend on the width (why), as found one by one.
    device, mlx, dtype, bundle: what was measured; seconds: what the probe took.
    pass_seconds:     time of one pass of width w = 1, 2, ... (index w - 1).
    """

    exact: bool
    plain_width: int
    max_draft_tokens: int
    agree: list[int]
    differs: list[Difference] = field(default_factory=list)
    device: str = ""
    mlx: str = ""
    dtype: str = ""
    bundle: str = ""
    seconds: float = 0.0
    pass_seconds: list[float] = field(default_factory=list)

    def widths(self, exactness: str = "strict") -> Widths:
        """The widths the loop uses. Not exact: plain decoding ("strict"), or drafting anyway at the
        usual widths ("relaxed": same distribution, greedy ties may break differently)."""
        if self.exact:
            return Widths(self.plain_width, self.max_draft_tokens)
        return Widths(1, MAX_DRAFT if exactness == "relaxed" else 0)

    def summary(self) -> str:
        """One line for a log, a panel or stderr."""
        if self.exact and self.plain_width == 1 and self.max_draft_tokens == MAX_DRAFT:
            return f"exact on {self.device}: every width 1-{MAX_DRAFT + 1} gives the same rows"
        why = "; ".join(d.line() for d in self.differs[:2]) or "rows depend on the pass width"
        if self.exact:
            return (
                f"exact on {self.device} with plain steps at width {self.plain_width} and at most "
                f"{self.max_draft_tokens} drafts ({why})"
            )
        return f"not exact on {self.device}: no pass widths agree ({why})"

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> Verdict:
        data = dict(data)
        data["differs"] = [Difference(**d) for d in data.get("differs", [])]
        return cls(**data)


def notes(verdict: Verdict, draft, exactness: str = "strict") -> list[str]:
    """What a front end tells the user before decoding with `draft` ("auto" or k) on a device with
    this verdict: nothing when every width agrees, else one line each (stderr, a panel, a log)."""
    out = []
    if draft == 0:
        return out  # plain decoding is exact by definition
    if not verdict.exact and exactness == "strict":
        out.append(f"{verdict.summary()}: decoding plainly; --exactness relaxed drafts anyway")
    elif not verdict.exact:
        out.append(f"{verdict.summary()}: drafting anyway (same distribution, greedy ties may break differently)")
    elif draft != "auto" and int(draft) > verdict.max_draft_tokens:
        out.append(
            f"--draft-tokens {draft} is more than the {verdict.max_draft_tokens} drafts whose verify "
            f"rounds exactly on {verdict.device}: using {verdict.max_draft_tokens}"
        )
    return out


def _ranges(ws: list[int]) -> str:
    out, start = [], None
    for i, w in enumerate(ws):
        if start is None:
            start = w
        if i + 1 == len(ws) or ws[i + 1] != w + 1:
            out.append(str(start) if start == w else f"{start}-{w}")
            start = None
    return ", ".join(out)
