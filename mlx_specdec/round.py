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
from .sampling import SamplingParams, accept, probs, sample


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
    check:     with several processes, every process's account of the round, gathered
               (distributed.py `Agreement`); read by the same sync. None in one process.
    """

    k: int
    drafts: Optional[mx.array]
    accepted: Optional[mx.array]
    bonus: mx.array
    hidden: mx.array
    handed_at: Optional[float]
    check: Optional[mx.array] = None

    @property
    def outputs(self) -> list[mx.array]:
        """What the round's one host sync evaluates."""
        out = [self.bonus] if self.k == 0 else [self.accepted, self.bonus, self.drafts]
        return out if self.check is None else [*out, self.check]


def draft(bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams):
    """k lazy drafter steps at position p -> (drafts [k], draft distributions [k, V] or None)."""
    target, drafter = bundle.target, bundle.drafter
    kv = drafter_kv(pc.cache, target.kv_layers)
    position = cache_offset(pc.cache)
    x, drafts, qs = bonus.reshape(1, 1), [], []
    for _ in range(k):
        logits, h = drafter(target.embed(x), h, kv, position)
        if params.greedy:
            x = mx.argmax(logits[:, -1], axis=-1).reshape(1, 1)
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
    bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams, plain_width: int = 1
) -> IssuedRound:
    """Phases 1-3 of one round, lazily. The target hands the first layers of a pass to the device
    while it builds the rest (models/target.py, issue_early)."""
    if k == 0:  # plain decoding: the next token is sampled from the one row kept
        logits, hidden = target_pass(bundle.target, pc, bonus.reshape(1, 1), plain_width)
        return IssuedRound(0, None, None, sample(logits[0, -1], params), hidden, bundle.target.handed_at)
    # 1. draft: k lazy drafter steps from (bonus, h) at position p, handed to the device at once
    #    (not a sync): it drafts while the host builds the verify pass.
    drafts, q = draft(bundle, pc, bonus, h, k, params)
    handed = time.perf_counter()  # timed before the call: async_eval can block on a busy device
    mx.async_eval(drafts)
    # 2. verify: one target pass over [x_p, d_1..d_k] (positions p..p+k).
    logits, hidden = target_pass(bundle.target, pc, mx.concatenate([bonus.reshape(1), drafts])[None], plain_width)
    # 3. accept: n drafts and the next bonus token from row n, still lazy.
    n, nxt = accept(logits[0], drafts, q, params)
    return IssuedRound(k, drafts, n, nxt, hidden, handed)
