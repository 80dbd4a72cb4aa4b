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

Each sync also reads whether the target's logits rows that chose a token are finite: NaN or inf
(corrupt weights, or activations that overflow late in a long context) stop generation there
with one line (`NOT_FINITE`) instead of yielding argmax-of-NaN tokens (`<pad>`). The check is a
reduction over rows the pass computed anyway, read by the round's one sync.

Invariant: `PromptCache.tokens` lists exactly the tokens whose K/V the cache holds. A closed or
failed generator restores it in `finally`.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import NamedTuple, Optional

import mlx.core as mx
from mlx_lm.generate import generation_stream, wired_limit

from . import probe
from .cache import PromptCache, cache_offset, rewind
from .calibrate import make_policy
from .errors import SpecdecError, UsageError
from .grammar import Constraint
from .load import Bundle
from .media import Media
from .numerics import Widths
from .round import issue_round, target_pass
from .sampling import Penalties, sample
from .settings import GenerationSettings, SamplingParams
from .stats import HostWait, Round, RunStats, TokenRecord
from .text import TextStream

PREFILL_CHUNK = 512
NOT_FINITE = (
    "the target's logits are not finite (NaN or inf): its weights are likely corrupt or wrongly "
    "converted; re-convert or re-download the model"
)


def _prefill(
    bundle: Bundle, pc: PromptCache, ids: list[int], plain_width: int, media: Optional[Media] = None, start: int = 0
) -> tuple[mx.array, mx.array]:
    """Run the target over `ids`; returns (logits [1, V], hidden [1, 1, H]) of the last position.

    All but the last token go in chunks and only their cache entries are evaluated: the lazy
    graph then skips the KV-shared layers and the head for them (20 of E2B's 35 layers). The
    last token runs on its own, through every layer, as a plain step does (at the plain width):
    its row gives the first token. `media`: images whose soft tokens replace their placeholders'
    embeddings (media.py), and which may move a chunk's end so that no image is cut in two;
    `start`: the prompt position of ids[0].
    """
    head, last = ids[:-1], ids[-1:]
    i = 0
    while i < len(head):
        end = min(i + PREFILL_CHUNK, len(head))
        if media is None:
            bundle.target(mx.array(head[i:end])[None], pc.cache)
        else:  # media hook: placeholders never come last (Media.check), so only the chunks differ
            end = media.chunk_end(start + i, start + end) - start  # images that see themselves stay whole
            media.prefill(bundle.target, head[i:end], start + i, pc.cache)
        mx.eval([c.state for c in pc.cache])  # bound memory: one chunk at a time
        i = end
    logits, hidden = target_pass(bundle.target, pc, mx.array(last)[None], plain_width)
    return logits[:, -1], hidden


def rounds(
    bundle: Bundle,
    pc: PromptCache,
    bonus: mx.array,
    h: mx.array,
    policy,
    params: SamplingParams,
    budget: int,
    widths: Widths = Widths(),
    host_wait: Optional[HostWait] = None,
    constraint: Optional[Constraint] = None,
    penalties: Optional[Penalties] = None,
    agreement=None,
) -> Iterator[Round]:
    """Rounds after the prefill, until `budget` tokens have been yielded or the caller stops.
    `bonus` (scalar) and `h` [1, 1, H] are the prefill's token and hidden state, already in `pc`
    except for the bonus token's K/V. A round never yields more tokens than the budget has left
    and never drafts more than `widths.max_draft`; the caller takes every token of a round before
    asking for the next one. `constraint` (the request's grammar) and `penalties` (logit bias,
    presence and frequency) follow each round's tokens; with either, no round is issued ahead.
    `agreement` (several processes, distributed.py): every process checks that all of them read
    the same round, in the round's one sync."""
    left = budget
    queued = None  # the next plain round, already issued
    while left > 0:
        t_start = time.perf_counter()
        position = len(pc.tokens)  # the index of x_p: every token before it is in the cache
        bonus_id = int(bonus.item())  # already computed: the previous round's sync read it
        # 1-3. draft, verify, accept: one lazy graph (a plain round may have been issued already).
        if queued is not None:
            issued, queued = queued, None
        else:
            k = policy.choose(min(left - 1, widths.max_draft))
            issued = issue_round(bundle, pc, bonus, h, k, params, widths.plain, constraint, penalties)
        ahead = constraint is None and penalties is None  # the next round needs nothing from this one
        if issued.k == 0 and left > 1 and ahead and policy.choose(min(left - 2, widths.max_draft)) == 0:
            # The next round is plain too: issue it now, it computes while this one is read.
            queued = issue_round(bundle, pc, issued.bonus, issued.hidden, 0, params, widths.plain)
            mx.async_eval(queued.bonus)
            queued = replace(queued, handed_at=queued.handed_at or time.perf_counter())
        if agreement is not None:  # several processes: gather each one's account of the round
            issued = agreement.attach(issued, bonus, position)
        if host_wait is not None:
            host_wait.before_sync(issued.handed_at)
        mx.eval(issued.outputs)  # sync: the one host read of the round
        if host_wait is not None:
            host_wait.after_sync()
        if agreement is not None:
            agreement.verify(issued, position)  # a diverged process: one SpecdecError on each
        accepted = int(issued.accepted.item()) if issued.k else 0
        drafted = tuple(issued.drafts.tolist()) if issued.k else ()
        if not all(issued.finite.tolist()[: accepted + 1]):  # rows 0..n chose this round's tokens
            raise SpecdecError(NOT_FINITE)

        # 4. rewind the rejected positions; h is the verify hidden state at p + n.
        rewind(pc.cache, issued.k - accepted)
        pc.tokens.extend([bonus_id, *drafted[:accepted]])
        h = issued.hidden[:, accepted : accepted + 1]
        bonus = issued.bonus
        policy.observe(issued.k, accepted)
        for follower in (constraint, penalties):
            if follower is not None:
                follower.consume([*drafted[:accepted], int(bonus.item())])
        left -= accepted + 1
        # 5. yield: the round's accepted drafts and its bonus token.
        yield Round(position, drafted, accepted, int(bonus.item()), time.perf_counter() - t_start)


def check_prompt(bundle: Bundle, ids: Sequence[int], limit: int) -> list[int]:
    """The prompt as a list of ints in the vocabulary and shorter than the context, or SpecdecError."""
    vocab = bundle.target.vocab_size
    if isinstance(ids, (str, bytes)) or not hasattr(ids, "__iter__"):
        raise UsageError(f"the prompt must be a list of token ids, not {type(ids).__name__}")
    out = []
    for t in ids:
        if isinstance(t, bool) or not isinstance(t, int) and not hasattr(t, "__index__"):
            raise UsageError(f"token ids must be whole numbers, not {t!r}")
        t = int(t)
        if not 0 <= t < vocab:
            raise UsageError(f"token id {t} is outside the vocabulary (0-{vocab - 1}); give ids below {vocab}")
        out.append(t)
    if not out:
        raise UsageError("the prompt is empty; give at least one token")
    if len(out) >= limit:
        raise UsageError(
            f"the prompt has {len(out)} tokens but the context holds {limit}; shorten it or raise --max-context"
        )
    return out


class Generation(NamedTuple):
    """What `generate` returns: the text, the token ids and the run's statistics."""

    text: str
    tokens: list[int]
    stats: RunStats


def stream_generate(
    bundle: Bundle,
    prompt_ids: Sequence[int],
    settings: GenerationSettings = GenerationSettings(),
    *,
    policy=None,
    prompt_cache: Optional[PromptCache] = None,
    stop_tokens: Optional[Sequence[int]] = None,
    host_wait: Optional[HostWait] = None,
    media: Optional[Media] = None,
    agreement=None,
) -> Iterator[TokenRecord]:
    """Generate up to `settings.max_tokens` tokens after `prompt_ids`, one TokenRecord per token.

    policy: the draft-length policy (calibrate.make_policy), owned by the caller so that what it
    learns carries over to its next request; None makes one from `settings` before the clock
    starts, so auto's one-off calibration never counts in time to first token.
    prompt_cache: reused across requests; only the ids after its common prefix are prefilled.
    stop_tokens: ids that end the output (kept as its last token); None: the tokenizer's EOS ids.
    host_wait: an optional probe of the time the device waits for the host (stats.HostWait).
    media: the images of `prompt_ids` (media.attach_images), merged into the prompt at prefill.
    agreement: with several processes (distributed.py), the per-round check that they agree.
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
    params, widths = settings.sampling, probe.verdict(bundle).widths(settings.exactness)
    constraint = Constraint.for_request(bundle, settings.grammar, stops) if settings.grammar else None
    penalties = None
    if settings.logit_bias or settings.presence_penalty or settings.frequency_penalty:
        vocab = bundle.target.vocab_size
        penalties = Penalties(vocab, settings.logit_bias, settings.presence_penalty, settings.frequency_penalty)

    t0 = time.perf_counter()
    pc = prompt_cache if prompt_cache is not None else PromptCache(bundle)
    if media is not None:  # placeholders look alike whatever the image: no K/V reuse past the first
        media.check(ids)
        pc.truncate(min(pc.reuse(ids), media.first_position))
    new_ids = ids[pc.reuse(ids) :]
    text = TextStream(bundle.tokenizer, settings.stop)
    # Tokens this request may still produce: the token budget, and the context the output must fit.
    budget = min(settings.max_tokens, limit - len(ids))
    try:
        with wired_limit(bundle.target.model, [generation_stream]), mx.stream(generation_stream):
            # 0. prefill: logits and hidden state of the last prompt token, then the first token.
            logits, h = _prefill(bundle, pc, new_ids, widths.plain, media, len(ids) - len(new_ids))
            pc.tokens.extend(new_ids)
            row = logits if penalties is None else penalties.apply(logits)
            row = row if constraint is None else constraint.apply(row)
            bonus = sample(row[0], params, len(ids))  # the token at position len(ids)
            finite = mx.isfinite(logits).all()
            mx.eval(bonus, h, finite)  # sync: the first token, and whether the target's logits are numbers
            if not finite.item():  # NaN or inf weights: every token would be an argmax of NaN (<pad>)
                raise SpecdecError(NOT_FINITE)
            ttft = time.perf_counter() - t0
            first = Round(len(ids), (), 0, int(bonus.item()), ttft)
            for follower in (constraint, penalties):
                if follower is not None:
                    follower.consume([int(bonus.item())])
            later = rounds(
                bundle, pc, bonus, h, policy, params, budget - 1, widths, host_wait, constraint, penalties, agreement
            )
            for index, rnd in enumerate(itertools.chain([first], later)):
                for i, token in enumerate(rnd.tokens):
                    budget -= 1
                    if token in stops or text.add(token) or (constraint is not None and constraint.done):
                        finish = "stop"
                    else:
                        finish = "length" if budget == 0 else None
                    yield TokenRecord(
                        token=token,
                        text=text.piece(final=finish is not None),
                        from_draft=i < rnd.accepted,
                        round=index,
                        draft_tokens=rnd.k,
                        accepted=rnd.accepted,
                        prompt_tokens=len(new_ids),
                        ttft_s=ttft,
                        elapsed_s=time.perf_counter() - t0 - ttft,
                        peak_memory_bytes=mx.get_peak_memory(),
                        finish_reason=finish,
                        round_info=rnd if i == 0 and index else None,
                    )
                    if finish is not None:
                        return
    finally:
        # A closed or failed generator: drop K/V the token list does not account for.
        if cache_offset(pc.cache) > len(pc.tokens):
            pc.truncate(len(pc.tokens))


def generate(
    bundle: Bundle, prompt_ids: Sequence[int], settings: GenerationSettings = GenerationSettings(), **kwargs
) -> Generation:
    """Run `stream_generate` to the end -> Generation(text, token ids, RunStats)."""
    records = list(stream_generate(bundle, prompt_ids, settings, **kwargs))
    return Generation("".join(r.text for r in records), [r.token for r in records], RunStats.from_records(records))
