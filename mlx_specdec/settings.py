"""One settings object from the command line down to the loop, validated once.

`GenerationSettings` says how one request is generated: token budget, draft length, sampling
(`SamplingParams`: temperature and filters, validated here, applied by `sampling.py`),
stop strings, context limit and the auto draft length's objective. Every front end (CLI,
chat, bench, server) builds one, and the library takes it whole: no layer forwards a dozen
loose keyword arguments. Construction validates every value, so a bad one fails before any
model is loaded, in one line that names the option and the fix.

`parse_draft` turns what a user types for the draft length (`K`, `auto`, `off`) into the
value the settings hold; the CLI options and the chat's `/draft` share it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Optional, Union

from .errors import UsageError

MAX_DRAFT = 8  # the most drafts one round may propose

DraftSetting = Union[int, str]  # 0..MAX_DRAFT, or "auto"


def parse_draft(value) -> DraftSetting:
    """ "auto" -> "auto"; "off" -> 0; K (int or text) -> K in 0..MAX_DRAFT; anything else is an error."""
    text = str(value).strip().lower()
    if text in ("auto", "off"):
        return "auto" if text == "auto" else 0
    try:
        k = int(text)
    except ValueError:
        k = -1
    if not 0 <= k <= MAX_DRAFT:
        raise UsageError(f"draft tokens must be 0-{MAX_DRAFT}, 'auto' or 'off', not {str(value)!r}")
    return k


def draft_label(draft: DraftSetting) -> str:
    return "off" if draft == 0 else str(draft)


GRAMMAR_KINDS = ("json", "json_schema", "regex", "lark")


def check_grammar(grammar) -> None:
    """(kind, text) with a known kind, and a schema that is a JSON object; else one line."""
    if not (isinstance(grammar, tuple) and len(grammar) == 2 and all(isinstance(x, str) for x in grammar)):
        raise UsageError(f"grammar must be (kind, text), not {grammar!r}"[:200])
    kind, text = grammar
    if kind not in GRAMMAR_KINDS:
        raise UsageError(f"grammar kind must be one of {', '.join(GRAMMAR_KINDS)}, not {kind!r}")
    if kind == "json_schema":
        try:
            schema = json.loads(text)
        except ValueError as e:
            raise UsageError(f"the JSON schema is not JSON ({e})") from None
        if not isinstance(schema, dict):
            raise UsageError(f"a JSON schema is an object, not {type(schema).__name__}")


# float32's smallest normal number: a smaller temperature may round to 0 in float32, and the shifted
# logits divided by it are then 0/0 (NaN) for the top token, so such temperatures are greedy.
GREEDY_BELOW = 1.1754943508222875e-38


@dataclass(frozen=True)
class SamplingParams:
    """temp 0 means greedy; top_k 0, top_p 1 and min_p 0 disable those filters.

    Construction validates the ranges (one line naming the option), so `sampling.probs` never
    gets values that would leave an empty or NaN distribution.
    """

    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None

    def __post_init__(self):
        def number(name, value, ok, want):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not _finite(value) or not ok(value):
                text = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise UsageError(f"{name} must be {want}, not {text}")

        number("--temp", self.temp, lambda v: v >= 0, "a number >= 0 (0 is greedy)")
        number("--top-p", self.top_p, lambda v: 0 < v <= 1, "in (0, 1] (1 turns it off)")
        number("--min-p", self.min_p, lambda v: 0 <= v <= 1, "in [0, 1] (0 turns it off)")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise UsageError(f"--top-k must be a whole number >= 0 (0 turns it off), not {self.top_k!r}")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**64
        ):
            raise UsageError(f"--seed must be a whole number from 0 to 2^64 - 1, not {self.seed!r}")

    @property
    def greedy(self) -> bool:
        """Greedy at 0 and at every temperature too small to divide by in float32 (1e-46 is 0 there):
        the limit those temperatures approach, never a NaN distribution."""
        return self.temp < GREEDY_BELOW


def _finite(value) -> bool:
    try:
        return math.isfinite(value)
    except OverflowError:  # an int too large for a float (10**400)
        return False


@dataclass(frozen=True)
class GenerationSettings:
    """How one request is generated.

    max_tokens:  most tokens to generate (>= 1).
    draft:       drafts per round, 0..MAX_DRAFT (0 = plain decoding), or "auto".
    sampling:    temperature and filters (`SamplingParams` validates its own ranges).
    stop:        stop strings; the output ends before the first one (one string is one stop
                 string, not its characters; None is none).
    max_context: the context limit in tokens (>= 2); None means the model's own limit.
    battery:     auto draft length per joule (True), per second (False), or per joule when
                 the machine runs on battery (None).
    logit_bias:  ((token id, bias), ...) added to the logits (OpenAI's logit_bias, -100..100).
    presence_penalty, frequency_penalty: OpenAI's (-2..2): subtracted once per generated token
                 seen (presence) or per occurrence (frequency). All three change the target's
                 distribution and the drafter's alike (sampling.Penalties).
    grammar:     None, or (kind, text): the output must match a grammar (grammar.py: "json" for
                 any JSON object, "json_schema" with the schema's JSON text, "regex", "lark").
    exactness:   "strict": on a device where no pass widths agree bit for bit (probe.py), decode
                 plainly; "relaxed": draft anyway (same distribution, greedy ties may break
                 differently).
    """

    max_tokens: int = 256
    draft: DraftSetting = "auto"
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    max_context: Optional[int] = None
    battery: Optional[bool] = None
    exactness: str = "strict"
    grammar: Optional[tuple[str, str]] = None
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0

    def __post_init__(self):
        if isinstance(self.max_tokens, bool) or not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise UsageError(f"--max-tokens must be a whole number >= 1, not {self.max_tokens!r}")
        object.__setattr__(self, "draft", parse_draft(self.draft))
        if self.max_context is not None and (not isinstance(self.max_context, int) or self.max_context < 2):
            raise UsageError(
                "--max-context must be a whole number >= 2 (or left out for the model's limit), "
                f"not {self.max_context!r}"
            )
        if not isinstance(self.sampling, SamplingParams):
            raise UsageError(f"sampling must be a SamplingParams, not {type(self.sampling).__name__}")
        stop = () if self.stop is None else (self.stop,) if isinstance(self.stop, str) else self.stop
        try:
            stop = tuple(stop)
        except TypeError:
            stop = (stop,)
        bad = [s for s in stop if not isinstance(s, str)]
        if bad:
            raise UsageError(f"--stop takes text (one string or a list of strings), not {bad[0]!r}")
        object.__setattr__(self, "stop", tuple(s for s in stop if s))
        if self.battery not in (None, True, False):
            raise UsageError(f"battery must be True, False or None (decide by power source), not {self.battery!r}")
        if self.grammar is not None:
            check_grammar(self.grammar)
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not -2 <= value <= 2:
                raise UsageError(f"{name} must be a number from -2 to 2, not {value!r}"[:200])
        try:
            bias = tuple((int(t), float(b)) for t, b in dict(self.logit_bias).items())
        except (TypeError, ValueError):
            raise UsageError("logit_bias maps token ids to numbers from -100 to 100") from None
        if any(t < 0 or not -100 <= b <= 100 for t, b in bias):
            raise UsageError("logit_bias maps token ids (>= 0) to numbers from -100 to 100")
        object.__setattr__(self, "logit_bias", bias)
        if self.exactness not in ("strict", "relaxed"):
            raise UsageError(f"--exactness must be 'strict' or 'relaxed', not {self.exactness!r}")

    def context_limit(self, config: dict) -> int:
        """The context in tokens for a target with this config; above the model's limit is an error."""
        model_limit = config.get("max_position_embeddings") or 131072
        if self.max_context is None:
            return model_limit
        if self.max_context > model_limit:
            raise UsageError(
                f"--max-context {self.max_context} is more than the model's {model_limit} positions; "
                f"use at most {model_limit}"
            )
        return self.max_context
