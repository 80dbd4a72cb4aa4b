"""The speculative decoding loop: prefill, then rounds of draft, verify, accept, rewind.

Round r (DESIGN.md). The target's cache holds positions 0..p-1; the bonus token x_p was chosen
by the target from its logits at p-1, and h is the target's final-normed hidden state at p-1.

  1. draft   the drafter proposes d_1..d_k from (x_p, h) at the fixed position p, reading the
             target's K/V (no drafter cache). The drafts go to the device at once (no sync).
  2. verify  one target pass over [x_p, d_1..d_k] (positions p..p+k) -> k+1 logits rows.
  3. accept  greedy: the longest prefix with d_i == argmax; sampling: rejection sampling with
             the drafter's own distribution. The next bonus token comes from row n.
     -- the one host sync of the round: read n and the tokens --
  4. rewind  drop the K/V of the k - n rejected positions; h = verify hidden at p + n.

`rounds` is that algorithm alone and yields one `stats.Round` per round. `stream_generate`
around it prefills, turns rounds into one `TokenRecord` per token, and applies the token
budget, the context limit and the stop conditions.

With k = 0 the same round is plain decoding (verify is a one-token forward). A plain round needs
no host value to plan the next, so when the next is plain too it is issued before the sync and
computes while this one is read (mlx-lm overlaps its steps the same way). Greedy output equals
plain greedy decoding token for token; sampled output has the target's distribution.

Invariant: `PromptCache.tokens` lists exactly the tokens whose K/V the cache holds. A closed or
failed generator restores it in `finally`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from typing import Optional

import mlx.core as mx
from mlx_lm.generate import generation_stream, wired_limit

from .cache import PromptCache, cache_offset, drafter_kv, rewind
from .draft_len import make_policy
from .errors import SpecdecError
from .load import Bundle
from .sampling import SamplingParams, accept, probs, sample
from .settings import MAX_DRAFT, GenerationSettings
from .stats import Round, RunStats, TokenRecord
from .text import TextStream

PREFILL_CHUNK = 512


def _prefill(bundle: Bundle, pc: PromptCache, ids: list[int]) -> tuple[mx.array, mx.array]:
    """Run the target over `ids`; returns (logits [1, V], hidden [1, 1, H]) of the last position.

    All but the last token go in chunks and only their cache entries are evaluated: the lazy
    graph then skips the KV-shared layers and the head for them (20 of E2B's 35 layers). The
    last token runs on its own, through every layer.
    """
    head, last = ids[:-1], ids[-1:]
    for start in range(0, len(head), PREFILL_CHUNK):
        bundle.target(mx.array(head[start : start + PREFILL_CHUNK])[None], pc.cache)
        mx.eval([c.state for c in pc.cache])  # bound memory: one chunk at a time
    logits, hidden = bundle.target(mx.array(last)[None], pc.cache)
    return logits[:, -1], hidden


def _draft(bundle: Bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams):
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


def issue_round(bundle: Bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams):
    """Phases 1-3 of one round, lazily -> (drafts [k] or None, n or None, next bonus, verify hidden,
    when the drafts were handed to the device or None). A plain round (k = 0) has no drafts and
    n = 0 without asking the device. The target hands the first layers of a pass to the device
    while it builds the rest (models/target.py, issue_early)."""
    if k == 0:  # plain decoding: verify is a one-token step and the next token is sampled from it
        logits, hidden = bundle.target(bonus.reshape(1, 1), pc.cache)
        return None, None, sample(logits[0, -1], params), hidden, bundle.target.handed_at
    # 1. draft: k lazy drafter steps from (bonus, h) at position p, handed to the device at once
    #    (not a sync): it drafts while the host builds the verify pass.
    drafts, q = _draft(bundle, pc, bonus, h, k, params)
    handed = time.perf_counter()  # timed before the call: async_eval can block on a busy device
    mx.async_eval(drafts)
    # 2. verify: one target pass over [x_p, d_1..d_k] (positions p..p+k).
    logits, hidden = bundle.target(mx.concatenate([bonus.reshape(1), drafts])[None], pc.cache)
    # 3. accept: n drafts and the next bonus token from row n, still lazy.
    n, nxt = accept(logits[0], drafts, q, params)
    return drafts, n, nxt, hidden, handed


def rounds(
    bundle: Bundle,
    pc: PromptCache,
    bonus: mx.array,
    h: mx.array,
    policy,
    params: SamplingParams,
    room: Callable[[int], int],
) -> Iterator[Round]:
    """Rounds after the prefill, until the caller stops. `bonus` (scalar) and `h` [1, 1, H] are
    the prefill's token and hidden state, already in `pc` except for the bonus token's K/V.

    room(t): the most drafts a round may propose once t more tokens than now have been used
    (from the caller's token budget and context limit; < 0: no further round is wanted). The
    caller takes every token of a round before asking for the next one.
    """
    queued = None  # the next plain round, already issued
    t_synced = time.perf_counter()  # when the host last got control back from the device
    while True:
        t_start = time.perf_counter()
        position = len(pc.tokens)  # the index of x_p: every token before it is in the cache
        bonus_id = int(bonus.item())  # already computed: the previous round's sync read it
        # 1-3. draft, verify, accept: one lazy graph (a plain round may have been issued already).
        # `handed`: when this round's first work went to the device (its drafts, its first layers).
        if queued is not None:  # handed over before the last sync: the device did not wait for it
            (drafts, n, nxt, hidden, _), k, queued, handed = queued, 0, None, t_synced
        else:
            k = policy.choose(room(0))
            drafts, n, nxt, hidden, handed = issue_round(bundle, pc, bonus, h, k, params)
        if k == 0 and room(1) >= 0 and policy.choose(room(1)) == 0:
            # The next round is plain too: issue it now, it computes while this one is read.
            queued = issue_round(bundle, pc, nxt, hidden, 0, params)
            handed = handed or time.perf_counter()
            mx.async_eval(queued[2])
        handed = handed or time.perf_counter()
        if k:
            mx.eval(n, nxt, drafts)  # sync: the one host read of the round
            accepted, drafted = int(n.item()), tuple(drafts.tolist())
        else:
            mx.eval(nxt)  # sync: the one host read of a plain round
            accepted, drafted = 0, ()
        host_s, t_synced = handed - t_synced, time.perf_counter()

        # 4. rewind the rejected positions; h is the verify hidden state at p + n.
        rewind(pc.cache, k - accepted)
        pc.tokens.extend([bonus_id, *drafted[:accepted]])
        h = hidden[:, accepted : accepted + 1]
        bonus = nxt
        policy.observe(k, accepted)
        yield Round(position, drafted, accepted, int(nxt.item()), time.perf_counter() - t_start, host_s)


def check_prompt(bundle: Bundle, ids: Sequence[int], limit: int) -> list[int]:
    """The prompt as a list of ints in the vocabulary and shorter than the context, or SpecdecError."""
    vocab = bundle.target.vocab_size
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise SpecdecError(f"the prompt must be a list of token ids, not {type(ids).__name__}")
    out = []
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) and not hasattr(t, "__index__"):
            raise SpecdecError(f"token ids must be whole numbers, not {t!r}")
        t = int(t)
        if not 0 <= t < vocab:
            raise SpecdecError(f"token id {t} is outside the vocabulary (0-{vocab - 1}); give ids below {vocab}")
        out.append(t)
    if not out:
        raise SpecdecError("the prompt is empty; give at least one token")
    if len(out) >= limit:
        raise SpecdecError(
            f"the prompt has {len(out)} tokens but the context holds {limit}; shorten it or raise --max-context"
        )
    return out


def stream_generate(
    bundle: Bundle,
    prompt_ids: Sequence[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    policy=None,
    prompt_cache: Optional[PromptCache] = None,
    stop_tokens: Optional[Sequence[int]] = None,
) -> Iterator[TokenRecord]:
    """Generate up to `settings.max_tokens` tokens after `prompt_ids`, one TokenRecord per token.

    policy: the draft-length policy (draft_len.make_policy); None makes one from `settings`
    before the clock starts, so auto's one-off calibration never counts in time to first token.
    prompt_cache: reused across requests; only the ids after its common prefix are prefilled.
    stop_tokens: ids that end the output (kept as its last token); None: the tokenizer's EOS ids.
    """
    if not isinstance(bundle, Bundle):
        raise SpecdecError(f"stream_generate needs a Bundle from load(), not {type(bundle).__name__}")
    if not isinstance(settings, GenerationSettings):
        raise SpecdecError(f"settings must be a GenerationSettings, not {type(settings).__name__}")
    limit = settings.context_limit(bundle.target.config)
    ids = check_prompt(bundle, prompt_ids, limit)
    if bundle.drafter is None and settings.draft not in (0, "auto"):
        raise SpecdecError(f"draft tokens {settings.draft} need a drafter; load one, or use --no-draft")
    if policy is None:
        policy = make_policy(settings.draft, bundle, settings.battery)
    stops = set(getattr(bundle.tokenizer, "eos_token_ids", ()) or ()) if stop_tokens is None else set(stop_tokens)
    params = settings.sampling
    max_tokens = settings.max_tokens

    t0 = time.perf_counter()
    if params.seed is not None:
        mx.random.seed(params.seed)
    pc = prompt_cache if prompt_cache is not None else PromptCache(bundle)
    new_ids = ids[pc.reuse(ids) :]
    text = TextStream(bundle.tokenizer, settings.stop)
    generated = 0

    def room(ahead: int) -> int:
        """Most drafts a round may propose `ahead` tokens from now: within the budget and context."""
        return min(max_tokens - generated - ahead - 1, limit - len(pc.tokens) - ahead - 1, MAX_DRAFT)

    def record(token: int, from_draft: bool, rnd: Optional[Round], index: int, first: bool) -> TokenRecord:
        nonlocal generated
        generated += 1
        if token in stops or text.add(token):
            finish = "stop"
        elif generated >= max_tokens or len(pc.tokens) + 1 >= limit:
            finish = "length"
        else:
            finish = None
        return TokenRecord(
            token=token,
            text=text.piece(final=finish is not None),
            from_draft=from_draft,
            round=index,
            draft_tokens=rnd.k if rnd else 0,
            accepted=rnd.accepted if rnd else 0,
            prompt_tokens=len(new_ids),
            ttft_s=ttft,
            elapsed_s=time.perf_counter() - t_first,
            peak_memory_bytes=mx.get_peak_memory(),
            finish_reason=finish,
            round_info=rnd if first else None,
        )

    try:
        with wired_limit(bundle.target.model, [generation_stream]), mx.stream(generation_stream):
            # 0. prefill: logits and hidden state of the last prompt token, then the first token.
            logits, h = _prefill(bundle, pc, new_ids)
            pc.tokens.extend(new_ids)
            bonus = sample(logits, params)
            mx.eval(bonus, h)  # sync: the first token
            ttft = time.perf_counter() - t0
            t_first = time.perf_counter()
            first = record(int(bonus.item()), False, None, 0, False)
            yield first
            if first.finish_reason is not None:
                return
            for index, rnd in enumerate(rounds(bundle, pc, bonus, h, policy, params, room), start=1):
                for i, token in enumerate(rnd.tokens):
                    r = record(token, i < rnd.accepted, rnd, index, i == 0)
                    yield r
                    if r.finish_reason is not None:
                        return
    finally:
        # A closed or failed generator: drop K/V the token list does not account for.
        if cache_offset(pc.cache) > len(pc.tokens):
            pc.truncate(len(pc.tokens))


def generate(bundle: Bundle, prompt_ids: Sequence[int], settings: GenerationSettings = GenerationSettings(), **kwargs):
    """Run `stream_generate` to the end -> (text, token ids, RunStats)."""
    records = list(stream_generate(bundle, prompt_ids, settings, **kwargs))
    return "".join(r.text for r in records), [r.token for r in records], RunStats.from_records(records)
