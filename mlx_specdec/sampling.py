"""Pure sampling functions: filtered distributions, sampling, and the two acceptance rules.

All functions are lazy mlx code (no host sync), so a whole round stays one graph.

Acceptance (DESIGN.md, Leviathan et al. / Chen et al.): with target distributions p_0..p_k
(rows of the verify pass) and drafts d_i ~ q_{i-1}:
* rejection sampling: accept d_i with probability min(1, p(d_i) / q(d_i)); at the first
  rejection (row n) draw the next token from norm(max(0, p_n - q_n)); if all k drafts are
  accepted draw it from p_k. The output then has exactly the target's distribution.
* greedy is the special case of one-hot p and q: accept while d_i == argmax p_{i-1}, and
  the next token is argmax of the first unaccepted row.
* seeded (coupled): the token at position t is argmax(log p_t + g_t), with Gumbel noise g_t drawn
  from (seed, t) alone: an exact sample of p_t (the Gumbel-max trick). The drafter picks its
  draft for t with the same g_t from its own q_t, and a draft is accepted when it equals the
  target's pick, so the output is the target's pick at every position whatever the draft
  schedule: seeded speculative output equals seeded plain output. It accepts less than
  rejection sampling (the same noise makes p and q agree less often than the maximal coupling
  min(p, q) does), so unseeded requests keep rejection sampling.
"""

from __future__ import annotations

import hashlib
from typing import Optional

import mlx.core as mx

from .settings import GREEDY_BELOW, SamplingParams  # the validated sampling settings; re-exported here


def probs(logits: mx.array, params: SamplingParams) -> mx.array:
    """logits [..., V] -> the filtered, temperature-scaled distribution [..., V] (float32).

    The same function gives the target's p and the drafter's q, so both follow one rule.
    """
    z = logits.astype(mx.float32)
    # Shift before scaling: a tiny temperature then sends the others to -inf, never to NaN.
    # A temperature below GREEDY_BELOW is greedy (callers take argmax); here it is clamped, never 0/0.
    p = mx.softmax((z - z.max(axis=-1, keepdims=True)) / max(params.temp, GREEDY_BELOW), axis=-1)
    keep = None
    V = p.shape[-1]
    if 0 < params.top_k < V:
        kth = mx.sort(p, axis=-1)[..., V - params.top_k : V - params.top_k + 1]
        keep = p >= kth
    if params.min_p > 0.0:
        k = p >= params.min_p * p.max(axis=-1, keepdims=True)
        keep = k if keep is None else keep & k
    if params.top_p < 1.0:
        order = mx.argsort(-p, axis=-1)
        sorted_p = mx.take_along_axis(p, order, axis=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always).
        sorted_keep = (mx.cumsum(sorted_p, axis=-1) - sorted_p) < params.top_p
        k = mx.put_along_axis(mx.zeros(p.shape, dtype=mx.bool_), order, sorted_keep, axis=-1)
        keep = k if keep is None else keep & k
    if keep is not None:
        p = mx.where(keep, p, 0.0)
        p = p / p.sum(axis=-1, keepdims=True)
    return p


def noise(seed: int, first: int, rows: int, vocab: int) -> mx.array:
    """Gumbel noise [rows, V] for the tokens at positions first .. first + rows - 1, each row from
    (seed, position) alone, so a position gets the same noise whichever pass computes it."""
    keys = [
        int.from_bytes(hashlib.blake2b(f"{seed}:{t}".encode(), digest_size=8).digest(), "little")
        for t in range(first, first + rows)
    ]
    return mx.stack([mx.random.gumbel((vocab,), key=mx.random.key(k)) for k in keys])


def coupled(logits: mx.array, params: SamplingParams, first: int) -> mx.array:
    """logits [rows, V] predicting positions first.. -> the seeded picks [rows]: argmax(log p + g)."""
    return mx.argmax(mx.log(probs(logits, params)) + noise(params.seed, first, logits.shape[0], logits.shape[-1]), -1)


def sample(logits: mx.array, params: SamplingParams, position: Optional[int] = None) -> mx.array:
    """logits [V] -> a token id (scalar) for the token at `position`: argmax when greedy, the
    coupled pick when seeded (then `position` is needed), else a draw from the filtered p."""
    if params.greedy:
        return mx.argmax(logits, axis=-1)
    if params.seed is not None:
        return coupled(logits[None], params, position)[0]
    return mx.random.categorical(mx.log(probs(logits, params)), axis=-1)


def accept_greedy(target_logits: mx.array, drafts: mx.array) -> tuple[mx.array, mx.array]:
    """target_logits [k+1, V], drafts [k] (k >= 1) -> (accepted count n, next token), both mx scalars."""
    best = mx.argmax(target_logits, axis=-1)  # [k+1]
    k = drafts.shape[0]
    n = mx.cumprod((drafts == best[:k]).astype(mx.int32)).sum()
    return n, best[n]


def accept_rejection(p: mx.array, q: mx.array, drafts: mx.array) -> tuple[mx.array, mx.array]:
    """p [k+1, V] target, q [k, V] drafter, drafts [k] sampled from q (k >= 1) -> (n, next token)."""
    k = drafts.shape[0]
    V = p.shape[-1]
    rows = mx.arange(k)
    p_d, q_d = p[rows, drafts], q[rows, drafts]
    u = mx.random.uniform(shape=(k,))
    ok = (u * q_d < p_d).astype(mx.int32)  # u < p/q without dividing by a tiny q
    n = mx.cumprod(ok).sum()
    # Row k has q = 0, so "all accepted" draws from p_k itself.
    q_pad = mx.concatenate([q, mx.zeros((1, V), dtype=q.dtype)], axis=0)
    p_n = mx.take(p, n, axis=0)
    residual = mx.maximum(p_n - mx.take(q_pad, n, axis=0), 0.0)
    residual = mx.where(residual.sum() > 0, residual, p_n)  # p_n == q_n exactly: nothing to correct
    return n, mx.random.categorical(mx.log(residual))


def accept(
    target_logits: mx.array,
    drafts: mx.array,
    draft_probs: Optional[mx.array],
    params: SamplingParams,
    position: Optional[int] = None,
) -> tuple[mx.array, mx.array]:
    """Dispatch: greedy exact-match; seeded: exact match against the target's coupled picks
    (row 0 predicts `position`); else rejection sampling with the drafter's own distribution."""
    if params.greedy:
        return accept_greedy(target_logits, drafts)
    if params.seed is not None:
        picks = coupled(target_logits, params, position)
        k = drafts.shape[0]
        n = mx.cumprod((drafts == picks[:k]).astype(mx.int32)).sum()
        return n, picks[n]
    return accept_rejection(probs(target_logits, params), draft_probs, drafts)


class Penalties:
    """OpenAI's `logit_bias`, `presence_penalty` and `frequency_penalty` as one lazy change of the
    logits, the same for the target's rows and the drafter's steps, so greedy speculative output
    still equals plain output and sampling keeps the changed target's distribution.

    logits[t] += bias[t] - frequency * c[t] - presence * (c[t] > 0), where c counts the tokens
    generated so far (not the prompt's) plus, for a row after drafts, the drafts before it.
    """

    def __init__(self, vocab_size: int, bias=(), presence: float = 0.0, frequency: float = 0.0):
        self.presence, self.frequency = presence, frequency
        self.bias = None
        if bias:
            ids, values = zip(*bias)
            self.bias = mx.zeros((vocab_size,)).at[mx.array(ids)].add(mx.array(values, dtype=mx.float32))
        self.counts = mx.zeros((vocab_size,), dtype=mx.float32)
        self.vocab_size = vocab_size

    def apply(self, logits: mx.array, tokens: Optional[mx.array] = None) -> mx.array:
        """logits [R, V] -> changed logits [R, V] (float32). `tokens` [m]: generated since the last
        `consume`, not yet counted; row r counts tokens[: m - R + 1 + r] (the last row all of them)."""
        out = logits.astype(mx.float32)
        if self.bias is not None:
            out = out + self.bias
        if not (self.presence or self.frequency):
            return out
        counts = mx.broadcast_to(self.counts, out.shape)
        if tokens is not None and tokens.size:
            onehot = (tokens[:, None] == mx.arange(self.vocab_size)[None]).astype(mx.float32)
            before = mx.concatenate([mx.zeros((1, self.vocab_size)), mx.cumsum(onehot, axis=0)])  # [m + 1, V]
            counts = counts + before[before.shape[0] - out.shape[0] :]
        return out - self.frequency * counts - self.presence * (counts > 0)

    def consume(self, tokens: list[int]) -> None:
        self.counts = self.counts.at[mx.array(tokens)].add(1.0)
