"""Structured output: a grammar as a mask on the target's logits, advanced along accepted drafts.

A grammar is given as (kind, text): "json" (any JSON value... an object, as OpenAI's
`json_object`), "json_schema" (a JSON Schema; OpenAI's `json_schema`, strict tool parameters),
"regex" or "lark". llguidance compiles it against the tokenizer and tells, for the tokens so far,
which next tokens keep the output inside the grammar. Why llguidance: it computes a mask for a
262k vocabulary in well under a millisecond, rolls its state back by any number of tokens (a
rejected draft is undone, never re-parsed), covers JSON Schema as OpenAI's strict mode does, has
no dependencies, and is what mlx-vlm and vLLM use; its MLX helper is a Metal kernel, so the mask
is applied here with plain mlx ops that run on every backend.

In a round (round.py): the drafter proposes as usual; the host reads the drafts (a second sync,
only for constrained requests), keeps the prefix the grammar allows, and gets one mask per verify
row (row j: the state after x_p, d_1..d_j). The masked rows then go through the usual acceptance,
so greedy constrained speculative output equals greedy constrained plain output, and sampling
keeps the masked target's distribution.
"""

from __future__ import annotations

import json
import weakref
from typing import Optional

import mlx.core as mx
import numpy as np

from .errors import SpecdecError
from .settings import check_grammar

_TOKENIZERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _ll_tokenizer(tokenizer, vocab_size: int, eos: int):
    import llguidance.hf

    key = (vocab_size, eos)
    per = _TOKENIZERS.setdefault(tokenizer, {})
    if key not in per:  # ~1 s for a 262k vocabulary: once per tokenizer
        hf = getattr(tokenizer, "_tokenizer", tokenizer)
        try:
            per[key] = llguidance.hf.from_tokenizer(hf, n_vocab=vocab_size, eos_token=eos)
        except Exception as e:  # noqa: BLE001 - a tokenizer llguidance cannot read: one line
            raise SpecdecError(f"structured output needs a fast tokenizer ({' '.join(str(e).split())[:160]})") from None
    return per[key]


class Constraint:
    """The grammar state of one request: which tokens may come next, after what was generated."""

    def __init__(self, tokenizer, vocab_size: int, kind: str, text: str, eos: int):
        import llguidance

        check_grammar((kind, text))
        if kind in ("json", "json_schema"):
            # No free whitespace between tokens: a small model would otherwise pad until max_tokens.
            schema = {"type": "object"} if kind == "json" else json.loads(text)
            schema = {**schema, "x-guidance": {"whitespace_flexible": False, **schema.get("x-guidance", {})}}
            kind, text = "json_schema", json.dumps(schema)
        grammar = llguidance.grammar_from(kind, text)
        self.vocab_size = vocab_size
        self.matcher = llguidance.LLMatcher(_ll_tokenizer(tokenizer, vocab_size, eos), grammar)
        if self.matcher.is_error():
            raise SpecdecError(f"the grammar does not compile ({self.matcher.get_error()[:200]})")

    @classmethod
    def for_request(cls, bundle, grammar: tuple[str, str], stops) -> Constraint:
        """The grammar on `bundle`'s tokenizer; it ends the text with one of `stops` (the
        tokenizer's EOS when it is one, or when there are none)."""
        eos = getattr(bundle.tokenizer, "eos_token_id", None)
        if stops and eos not in stops:
            eos = min(stops)
        return cls(bundle.tokenizer, bundle.target.vocab_size, *grammar, eos if eos is not None else 0)

    @property
    def done(self) -> bool:
        """The grammar has ended: nothing but end of text may follow."""
        return self.matcher.is_stopped()

    def _mask(self) -> np.ndarray:
        words = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        return np.unpackbits(words, bitorder="little")[: self.vocab_size].astype(bool)

    def masks(self, drafts: list[int]) -> tuple[int, mx.array]:
        """-> (v, masks [v + 1, V]): the drafts the grammar allows (a prefix of v), and the allowed
        tokens after x_p, d_1, ..., d_v. The state is left where it was."""
        rows = [self._mask()]
        v = 0
        for d in drafts:
            if not rows[-1][d] or not self.matcher.consume_token(d):
                break
            v += 1
            rows.append(self._mask())
        if v:
            self.matcher.rollback(v)
        return v, mx.array(np.stack(rows))

    def apply(self, logits: mx.array, masks: Optional[mx.array] = None) -> mx.array:
        """logits [rows, V] -> the same with disallowed tokens at -inf (masks: from `masks`, or the
        current state's for one row)."""
        if masks is None:
            masks = mx.array(self._mask()[None])
        return mx.where(masks, logits, mx.array(-float("inf"), dtype=logits.dtype))

    def consume(self, tokens: list[int]) -> None:
        for t in tokens:
            if not self.matcher.consume_token(t):
                raise SpecdecError(f"token {t} breaks the grammar ({self.matcher.get_error()[:160]})")
