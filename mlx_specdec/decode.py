"""The speculative decoding loop: prefill, then rounds of draft, verify, accept, rewind, yield.

Round r (DESIGN.md). The target's cache holds positions 0..p-1; the bonus token x_p was chosen
by the target from its logits at p-1, and h is the target's final-normed hidden state at p-1.

  1. draft   the drafter proposes d_1..d_k from (x_p, h) at the fixed position p, reading the
             target's K/V (no drafter cache). Drafts stay lazy.
  2. verify  one target pass over [x_p, d_1..d_k] (positions p..p+k) -> k+1 logits rows.
  3. accept  greedy: the longest prefix with d_i == argmax; sampling: rejection sampling with
             the drafter's own distribution. The next bonus token comes from row n.
     -- the one host sync of the round: read n and the tokens --
  4. rewind  drop the K/V of the k - n rejected positions; h = verify hidden at p + n.
  5. yield   one TokenRecord per token: the n accepted drafts, then the bonus token.

With k = 0 the same loop is plain decoding (verify is a one-token forward). A plain round needs
no host value to plan the next, so when the next is plain too it is queued before the sync and
computes while this one is read (mlx-lm overlaps its steps the same way). Greedy output equals
plain greedy decoding token for token; sampled output has the target's distribution.

Invariant: `PromptCache.tokens` lists exactly the tokens whose K/V the cache holds. A closed or
failed generator restores it in `finally`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence, Union

import mlx.core as mx
from mlx_lm.generate import generation_stream, wired_limit

from .cache import RewindError, cache_offset, drafter_kv, make_target_cache, rewind
from .draft_len import MAX_DRAFT, make_policy
from .errors import SpecdecError
from .load import Bundle
from .sampling import SamplingParams, accept, probs, sample
from .stats import RunStats, TokenRecord

PREFILL_CHUNK = 512


class PromptCache:
    """The target's caches plus the token ids whose K/V they hold; reusable across requests."""

    def __init__(self, bundle: Bundle, max_rewind: int = 2 * MAX_DRAFT):
        self._config = bundle.target.config
        self._max_rewind = max_rewind
        self.reset()

    def reset(self) -> None:
        self.cache = make_target_cache(self._config, self._max_rewind)
        self.tokens: list[int] = []

    def truncate(self, n: int) -> None:
        """Keep the first n tokens (rewinding the caches); start afresh when the window forbids it."""
        drop = cache_offset(self.cache) - n
        try:
            rewind(self.cache, drop)
        except RewindError:
            self.reset()  # the sliding window no longer holds those positions: prefill again
            return
        del self.tokens[n:]


class _Text:
    """Detokenises the output, cuts it at the first stop string, and holds back a tail that may
    still become one, so no emitted text ever has to be taken back."""

    def __init__(self, tokenizer, stop: Sequence[str]):
        self.detok = tokenizer.detokenizer
        self.stop = [s for s in stop if s]
        self.text, self.emitted = "", 0

    def add(self, token: int) -> bool:
        """Append a token; True when a stop string now ends the text."""
        self.detok.add_token(token)
        self.text += self.detok.last_segment
        cuts = [c for s in self.stop if (c := self.text.find(s, max(0, self.emitted - len(s) + 1))) >= 0]
        if cuts:
            self.text = self.text[: min(cuts)]
        return bool(cuts)

    def piece(self, final: bool) -> str:
        """The text not yet emitted (all of it when final, else up to a possible stop prefix)."""
        if final:
            self.detok.finalize()
            self.text += self.detok.last_segment
        end = len(self.text) if final else len(self.text) - self._stop_prefix_len()
        out, self.emitted = self.text[self.emitted : end], max(self.emitted, end)
        return out

    def _stop_prefix_len(self) -> int:
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:n]):
                    best = n
                    break
        return best


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


@dataclass
class _Round:
    """One round's lazy results: k drafts, the verify hidden states, accepted count n, next bonus.
    A plain round (k = 0) has no drafts and n = 0 without asking the device."""

    k: int
    position: int
    hidden: mx.array
    bonus: mx.array
    drafts: Optional[mx.array] = None
    n: Optional[mx.array] = None


def _round(bundle: Bundle, pc: PromptCache, bonus: mx.array, h: mx.array, k: int, params: SamplingParams) -> _Round:
    """Phases 1-3 of a round, lazily: draft k tokens, verify [x_p, d_1..d_k], accept."""
    position = cache_offset(pc.cache)
    if k == 0:  # plain decoding: verify is a one-token step and the next token is sampled from it
        logits, hidden = bundle.target(bonus.reshape(1, 1), pc.cache)
        return _Round(0, position, hidden, sample(logits[0, -1], params))
    # 1. draft: k lazy drafter steps from (bonus, h) at position p.
    drafts, q = _draft(bundle, pc, bonus, h, k, params)
    # 2. verify: one target pass over [x_p, d_1..d_k] (positions p..p+k).
    logits, hidden = bundle.target(mx.concatenate([bonus.reshape(1), drafts])[None], pc.cache)
    # 3. accept: n drafts and the next bonus token from row n, still lazy.
    n, nxt = accept(logits[0], drafts, q, params)
    return _Round(k, position, hidden, nxt, drafts, n)


def stream_generate(
    bundle: Bundle,
    prompt_ids: Sequence[int],
    *,
    max_tokens: int = 256,
    draft_tokens: Union[int, str] = "auto",
    sampling: SamplingParams = SamplingParams(),
    stop: Sequence[str] = (),
    prompt_cache: Optional[PromptCache] = None,
    max_context: Optional[int] = None,
    trace: Optional[list] = None,
    battery: Optional[bool] = None,
) -> Iterator[TokenRecord]:
    """Generate up to `max_tokens` tokens after `prompt_ids`, one TokenRecord per token.

    draft_tokens: k (0 = plain decoding) or "auto" (chosen per round from measured acceptance
    and costs). With `prompt_cache`, only the ids after the cached common prefix are prefilled.
    `trace`, when a list, receives {"position", "drafted", "accepted"} per round. `battery`:
    "auto" maximises tokens per joule instead of per second (None: when on battery).
    """
    t0 = time.perf_counter()
    ids = [int(t) for t in prompt_ids]
    if not ids:
        raise SpecdecError("the prompt is empty; give at least one token")
    limit = max_context or bundle.target.config.get("max_position_embeddings", 131072)
    if len(ids) >= limit:
        raise SpecdecError(
            f"the prompt has {len(ids)} tokens but the context holds {limit}; shorten it or raise --max-context"
        )
    tokenizer = bundle.tokenizer
    eos = set(getattr(tokenizer, "eos_token_ids", ()) or ())
    policy = make_policy(draft_tokens if bundle.drafter is not None else 0, bundle, battery)
    if sampling.seed is not None:
        mx.random.seed(sampling.seed)
    pc = prompt_cache if prompt_cache is not None else PromptCache(bundle)

    # Reuse the cached common prefix; at least the last prompt token is run again (we need its
    # logits and hidden state).
    common = 0
    for a, b in zip(pc.tokens, ids[:-1]):
        if a != b:
            break
        common += 1
    pc.truncate(common)
    new_ids = ids[len(pc.tokens) :]

    text = _Text(tokenizer, stop)
    generated = 0
    round_no = 0
    try:
        with wired_limit(bundle.target.model, [generation_stream]), mx.stream(generation_stream):
            # 0. prefill: logits and hidden state of the last prompt token, then the first token.
            logits, h = _prefill(bundle, pc, new_ids)
            pc.tokens.extend(new_ids)
            bonus = sample(logits, sampling)
            mx.eval(bonus, h)  # sync: the first token
            ttft = time.perf_counter() - t0
            t_first = time.perf_counter()
            bonus_id = int(bonus.item())
            pending = [(bonus_id, False, 0, 0)]  # (token, from_draft, k, accepted)
            queued: Optional[_Round] = None  # the next plain round, already computing

            def room(done: int) -> int:
                """Most drafts the next round may propose: within max_tokens and the context."""
                return min(max_tokens - done - 1, limit - cache_offset(pc.cache) - 1, MAX_DRAFT)

            while True:
                # 5. yield the round's tokens (the prefill's token in the first pass).
                for token, from_draft, k_used, n_acc in pending:
                    generated += 1
                    if token in eos or text.add(token):
                        finish = "stop"
                    elif generated >= max_tokens or len(pc.tokens) + 1 >= limit:
                        finish = "length"
                    else:
                        finish = None
                    yield TokenRecord(
                        token=token, text=text.piece(final=finish is not None), from_draft=from_draft,
                        round=round_no, draft_tokens=k_used, accepted=n_acc, prompt_tokens=len(new_ids),
                        ttft_s=ttft, elapsed_s=time.perf_counter() - t_first,
                        peak_memory_bytes=mx.get_peak_memory(), finish_reason=finish,
                    )
                    if finish is not None:
                        return
                # 1-3. draft, verify, accept: one lazy graph (see _round).
                round_no += 1
                t_round = time.perf_counter()
                if queued is not None:
                    rnd, queued = queued, None
                else:
                    rnd = _round(bundle, pc, bonus, h, policy.choose(room(generated)), sampling)
                if rnd.k == 0:
                    # A plain round tells the policy nothing new, so the next round can be planned
                    # now; if it is plain too, queue it: it computes while this one is read.
                    policy.observe(0, 0, 0.0)
                    if room(generated + 1) >= 0 and policy.choose(room(generated + 1)) == 0:
                        queued = _round(bundle, pc, rnd.bonus, rnd.hidden, 0, sampling)
                        mx.async_eval(queued.bonus)
                if rnd.k:
                    mx.eval(rnd.n, rnd.bonus, rnd.drafts)  # sync: the one host read of the round
                    n_acc, draft_list = int(rnd.n.item()), rnd.drafts.tolist()
                else:
                    mx.eval(rnd.bonus)  # sync: the one host read of a plain round
                    n_acc, draft_list = 0, []

                # 4. rewind the rejected positions; h is the verify hidden state at p + n.
                rewind(pc.cache, rnd.k - n_acc)
                pc.tokens.extend([bonus_id] + draft_list[:n_acc])
                h = rnd.hidden[:, n_acc : n_acc + 1]
                bonus = rnd.bonus
                if rnd.k:
                    policy.observe(rnd.k, n_acc, time.perf_counter() - t_round)
                if trace is not None:
                    trace.append({"position": rnd.position, "drafted": draft_list, "accepted": n_acc})
                pending = [(t, True, rnd.k, n_acc) for t in draft_list[:n_acc]]
                bonus_id = int(bonus.item())
                pending.append((bonus_id, False, rnd.k, n_acc))
    finally:
        # A closed or failed generator: drop K/V the token list does not account for.
        if cache_offset(pc.cache) > len(pc.tokens):
            pc.truncate(len(pc.tokens))


def generate(bundle: Bundle, prompt_ids: Sequence[int], **kwargs) -> tuple[str, list[int], RunStats]:
    """Run `stream_generate` to the end -> (text, token ids, statistics)."""
    records = list(stream_generate(bundle, prompt_ids, **kwargs))
    return "".join(r.text for r in records), [r.token for r in records], RunStats.from_records(records)
