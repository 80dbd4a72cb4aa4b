"""`specdec check`: is speculative output bit-exact on this machine, for this bundle?

Two measurements: the numerics probe (probe.py: which pass widths give the same rows, what
differs, the plain width and draft cap it implies), then an end-to-end run: `tokens` greedy
tokens plain and speculative at the cap, compared token for token (the first differing position
when they differ). Where the probe finds no exact configuration, the speculative run drafts
anyway ("relaxed"), to show what that costs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Optional

from . import probe
from .decode import generate
from .numerics import Verdict
from .settings import MAX_DRAFT, GenerationSettings

QUESTION = "Explain in a few paragraphs how a bicycle stays upright, then list three safety tips."


@dataclass(frozen=True)
class EndToEnd:
    """tokens: greedy tokens generated each way; k: drafts per round of the speculative run;
    identical: the two outputs are the same; first_difference: index of the first differing
    token, or None."""

    tokens: int
    k: int
    identical: bool
    first_difference: Optional[int]


@dataclass(frozen=True)
class CheckResult:
    verdict: Verdict
    end_to_end: EndToEnd

    def to_json(self) -> dict:
        """The verdict's fields (exact, plain_width, max_draft_tokens, agree, differs, device, ...)
        plus `end_to_end`."""
        return {**self.verdict.to_json(), "end_to_end": asdict(self.end_to_end)}

    def lines(self) -> list[str]:
        v, e = self.verdict, self.end_to_end
        out = [
            f"{'exact' if v.exact else 'NOT exact'}: {v.bundle} on {v.device}, MLX {v.mlx}, {v.dtype}",
            f"widths that agree with plain steps: {', '.join(map(str, v.agree)) or 'none'}",
            f"plain steps at width {v.plain_width}; at most {v.max_draft_tokens} drafts per round",
        ]
        out += [f"differs: {d.line()}" for d in v.differs] or ["differs: nothing"]
        out.append(f"probe: {v.seconds:.2f} s")
        if e.identical:
            out.append(f"end to end: {e.tokens} greedy tokens identical, plain and k = {e.k}")
        else:
            out.append(f"end to end: plain and k = {e.k} first differ at token {e.first_difference} of {e.tokens}")
        return out


def _prompt_ids(bundle) -> list[int]:
    from .prompt import chat_ids

    try:
        return chat_ids(bundle.tokenizer, [{"role": "user", "content": QUESTION}])
    except Exception:  # noqa: BLE001 - a tokenizer without a chat template: the probe's own text
        return probe.probe_ids(bundle, 48)


def run_check(bundle, fresh: bool = False, tokens: int = 256) -> CheckResult:
    """Probe `bundle` on this device (`fresh`: measure again, not the cached verdict), then
    compare `tokens` greedy tokens plain and speculative at the cap."""
    verdict = probe.verdict(bundle, fresh=fresh)
    ids = _prompt_ids(bundle)
    tokens = max(1, min(tokens, GenerationSettings().context_limit(bundle.target.config) - len(ids) - 1))
    exactness = "strict" if verdict.exact else "relaxed"
    k = verdict.max_draft_tokens if verdict.exact else MAX_DRAFT
    if bundle.drafter is None:
        k = 0

    def run(draft: int) -> list[int]:
        settings = GenerationSettings(max_tokens=tokens, draft=draft, exactness=exactness)
        return generate(bundle, ids, settings, stop_tokens=()).tokens

    plain, spec = run(0), run(k)
    first = next((i for i, (a, b) in enumerate(zip(plain, spec)) if a != b), None)
    if first is None and len(plain) != len(spec):
        first = min(len(plain), len(spec))
    return CheckResult(verdict, EndToEnd(len(plain), k, first is None, first))
