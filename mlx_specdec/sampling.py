"""Pure sampling functions: filtered distributions, sampling, and the two acceptance rules.

All functions are lazy mlx code (no host sync), so a whole round stays one graph.

Acceptance (DESIGN.md, Leviathan et al. / Chen et al.): with target distributions p_0..p_k
(rows of the verify pass) and drafts d_i ~ q_{i-1}:
* rejection sampling: accept d_i with probability min(1, p(d_i) / q(d_i)); at the first
  rejection (row n) draw the next token from norm(max(0, p_n - q_n)); if all k drafts are
  accepted draw it from p_k. The output then has exactly the target's distribution.
* greedy is the special case of one-hot p and q: accept while d_i == argmax p_{i-1}, and
  the next token is argmax of the first unaccepted row.
"""

from __future__ import annotations

from typing import Optional

import mlx.core as mx

from .settings import SamplingParams  # the validated sampling settings; re-exported here


def probs(logits: mx.array, params: SamplingParams) -> mx.array:
    """logits [..., V] -> the filtered, temperature-scaled distribution [..., V] (float32).

    The same function gives the target's p and the drafter's q, so both follow one rule.
    """
    z = logits.astype(mx.float32)
    # Shift before scaling: a tiny temperature then sends the others to -inf, never to NaN.
    p = mx.softmax((z - z.max(axis=-1, keepdims=True)) / params.temp, axis=-1)
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


def sample(logits: mx.array, params: SamplingParams) -> mx.array:
    """logits [..., V] -> token ids [...]; argmax when greedy."""
    if params.greedy:
        return mx.argmax(logits, axis=-1)
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
    target_logits: mx.array, drafts: mx.array, draft_probs: Optional[mx.array], params: SamplingParams
) -> tuple[mx.array, mx.array]:
    """Dispatch: greedy exact-match, or rejection sampling with the drafter's own distribution."""
    if params.greedy:
        return accept_greedy(target_logits, drafts)
    return accept_rejection(probs(target_logits, params), draft_probs, drafts)
