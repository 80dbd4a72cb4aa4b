"""One round of the loop, issued lazily: phases 1-3 (draft, verify, accept), no host sync.

Round r (DESIGN.md). The target's cache holds positions 0..p-1; the bonus token x_p was chosen by
the target from its logits at p-1, and h is the target's final-normed hidden state at p-1.

  1. draft   the drafter proposes d_1..d_k from (x_p, h) at the fixed position p, reading the
             target's K/V (no drafter cache). The drafts go to the device at once (no sync).
  2. verify  one target pass over [x_p, d_1..d_k] (positions p..p+k) -> k+1 logits rows.
  3. accept  greedy: the longest prefix with d_i == argmax; sampling: rejection sampling with the
             drafter's own distribution. The next bonus token comes from row n.

With k = 0 the round is a plain decoding step. A pass narrower than `plain_width` rows is padded
to it by repeating its last token, and the padding is dropped at once (rewound like rejected
drafts): on a device whose kernels give a row a different rounding when it is computed alone or
in a small block (probe.py), every pass then runs at a width whose rows agree, and greedy
speculative output stays equal to plain output.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Optional

import mlx.core as mx

from .cache import PromptCache, cache_offset, drafter_kv, rewind
from .grammar import Constraint
from .sampling import Penalties, accept, probs, sample
from .settings import SamplingParams


@dataclass(frozen=True)
class IssuedRound:
    """A round's lazy results, before the host reads them.

    k:         drafts proposed (0: a plain step).
    drafts:    [k] draft tokens, None for a plain step.
    accepted:  scalar n, the accepted drafts; None for a plain step (0, known without the device).
    bonus:     scalar, the target's next token (from verify row n).
    hidden:    [1, rows, H] the pass's final-normed hidden states; row n is the next round's h.
    handed_at: perf_counter when the round's first work went to the device (its drafts, or a
               plain step's first layers: models/target.py issue_early), or None.
    finite:    [rows] whether each of the pass's logits rows is finite (no NaN or inf); the
               host reads rows 0..n of it in the same sync.
    check:     with several processes, every process's account of the round, gathered
               (distributed.py `Agreement`); read by the same sync. None in one process.
    """

    k: int
    drafts: Optional[mx.array]
    accepted: Optional[mx.array]
    bonus: mx.array
    hidden: mx.array
    handed_at: Optional[float]
    finite: mx.array
    check: Optional[mx.array] = None

    @property
    def outputs(self) -> list[mx.array]:
        """What the round's one host sync evaluates."""
        out = [self.bonus, self.finite] if self.k == 0 else [self.accepted, self.bonus, self.drafts, self.finite]
        return out if self.check is None else [*out, self.check]


def draft(bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams, penalties=None):
    """k lazy drafter steps at position p -> (drafts [k], draft distributions [k, V] or None).
    `penalties` change the drafter's logits as they change the target's."""
    target, drafter = bundle.target, bundle.drafter
    kv = drafter_kv(pc.cache, target.kv_layers)
    position = cache_offset(pc.cache)
    x, drafts, qs = bonus.reshape(1, 1), [], []
    for i in range(k):
        logits, h = drafter(target.embed(x), h, kv, position)
        if penalties is not None:
            logits = penalties.apply(logits[0], mx.concatenate(drafts) if drafts else None)[None]
        if params.greedy:
            x = mx.argmax(logits[:, -1], axis=-1).reshape(1, 1)
        elif params.seed is not None:  # the target's noise for the token at p + 1 + i
            x = sample(logits[0, -1], params, position + 1 + i).reshape(1, 1)
        else:
            q = probs(logits[0, -1], params)
            x = mx.random.categorical(mx.log(q)).reshape(1, 1)
            qs.append(q)
        drafts.append(x.reshape(1))
    return mx.concatenate(drafts), (mx.stack(qs) if qs else None)


def target_pass(target, pc: PromptCache, tokens: mx.array, min_rows: int = 1) -> tuple[mx.array, mx.array]:
    """One target pass over tokens [1, L], padded to at least `min_rows` rows by repeating the last
    token -> (logits [1, L, V], hidden [1, L, H]); the cache gains L positions (the padding's are
    dropped at once: nothing on the host is needed to know them)."""
    pad = min_rows - tokens.shape[1]
    if pad > 0:
        tokens = mx.concatenate([tokens, mx.repeat(tokens[:, -1:], pad, axis=1)], axis=1)
    logits, hidden = target(tokens, pc.cache)
    if pad > 0:
        rewind(pc.cache, pad)
        logits, hidden = logits[:, :-pad], hidden[:, :-pad]
    return logits, hidden


def issue_round(
    bundle,
    pc: PromptCache,
    bonus: mx.array,
    h: mx.array,
    k: int,
    params: SamplingParams,
    plain_width: int = 1,
    constraint: Optional[Constraint] = None,
    penalties: Optional[Penalties] = None,
) -> IssuedRound:
    """Phases 1-3 of one round, lazily. The target hands the first layers of a pass to the device
    while it builds the rest (models/target.py, issue_early). With a grammar `constraint` (its
    state after x_p), the host reads the drafts (a sync of their own), keeps the prefix the grammar
    allows, and masks every verify row with the grammar's state after the drafts before it.
    `penalties` (logit bias, presence and frequency) change the drafter's and the target's rows alike."""
    position = cache_offset(pc.cache)  # of x_p: row j of the pass predicts the token at p + 1 + j
    masks = None
    if k:
        # 1. draft: k lazy drafter steps from (bonus, h) at position p, handed to the device at once
        #    (not a sync): it drafts while the host builds the verify pass.
        drafts, q = draft(bundle, pc, bonus, h, k, params, penalties)
        handed = time.perf_counter()  # timed before the call: async_eval can block on a busy device
        mx.async_eval(drafts)
        if constraint is not None:  # sync: the grammar reads the drafts
            k, masks = constraint.masks(drafts.tolist())
            drafts, q = drafts[:k], (q[:k] if q is not None else None)
    if k == 0:  # plain decoding: the next token is sampled from the one row kept
        logits, hidden = target_pass(bundle.target, pc, bonus.reshape(1, 1), plain_width)
        row = logits[0] if penalties is None else penalties.apply(logits[0])
        row = row if constraint is None else constraint.apply(row, masks)
        nxt = sample(row[-1], params, position + 1)
        return IssuedRound(0, None, None, nxt, hidden, bundle.target.handed_at, _finite_rows(logits))
    # 2. verify: one target pass over [x_p, d_1..d_k] (positions p..p+k).
    logits, hidden = target_pass(bundle.target, pc, mx.concatenate([bonus.reshape(1), drafts])[None], plain_width)
    rows = logits[0] if penalties is None else penalties.apply(logits[0], drafts)
    rows = rows if constraint is None else constraint.apply(rows, masks)
    # 3. accept: n drafts and the next bonus token from row n, still lazy.
    n, nxt = accept(rows, drafts, q, params, position + 1)
    return IssuedRound(k, drafts, n, nxt, hidden, handed, _finite_rows(logits))


def _finite_rows(logits: mx.array) -> mx.array:
    """logits [1, rows, V] -> [rows] bool: the row holds no NaN or inf (before any mask or bias,
    which may set -inf on purpose). NaN or inf weights make every row non-finite sooner or later."""
    return mx.isfinite(logits[0]).all(axis=-1)
