"""The loop is exact: speculative greedy == plain greedy == transformers, at every context length."""

import mlx.core as mx
import pytest

from mlx_specdec.cache import PromptCache, cache_offset
from mlx_specdec.decode import generate, stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import Bundle
from mlx_specdec.settings import GenerationSettings as S
from mlx_specdec.stats import RunStats

WINDOW = 16  # the fixture target's sliding window


def prompt(n, seed=0):
    return [2] + [(seed * 7919 + 37 * i) % 500 + 9 for i in range(n - 1)]


@pytest.fixture(scope="module")
def plain_runs(bundles):
    """Plain greedy outputs for a short (< W) and a long (> 2W) prompt, 48 tokens (3W more)."""
    b = bundles["dense"]
    return {n: generate(b, prompt(n), S(max_tokens=48, draft=0))[1] for n in (5, 40)}


@pytest.mark.parametrize("head", ["dense", "centroid"])
def test_speculative_greedy_at_one_k_equals_plain_greedy_past_the_window(bundles, plain_runs, head):
    """The quick loop's check of exactness; every k and both prompts: the slow test below."""
    want = plain_runs[40][:30]  # greedy without EOS: a shorter run is a prefix of the longer one
    _, got, stats = generate(bundles[head], prompt(40), S(max_tokens=30, draft=3))
    assert got == want
    assert stats.drafted > 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "head, k", [("dense", k) for k in range(1, 9)] + [("centroid", k) for k in (1, 3, 4, 8)]
)  # the centroid head only changes what is drafted: the verify widths are the dense head's
def test_speculative_greedy_equals_plain_greedy(bundles, plain_runs, head, k):
    for n, want in plain_runs.items():
        _, got, stats = generate(bundles[head], prompt(n), S(max_tokens=48, draft=k))
        assert got == want, f"prompt {n}, k={k}"
        assert stats.drafted > 0


@pytest.mark.slow  # the quick loop checks transformers parity per family in test_families.py
def test_plain_and_speculative_greedy_equal_transformers_reference(bundles, reference):
    for g in range(3):
        ids = reference[f"target/greedy{g}/prompt_ids"].tolist()
        want = reference[f"target/greedy{g}/ids"].tolist()
        for head, k in (("dense", 0), ("dense", 4), ("centroid", 3))[: None if g == 0 else 2]:
            _, got, _ = generate(bundles[head], ids, S(max_tokens=len(want), draft=k))
            assert got == want, f"greedy{g} {head} k={k}"


class ScriptedDrafter:
    """A test double for the drafter: proposes the plain greedy continuation (agree=True) or
    a token that is always wrong (agree=False). It keeps the drafter's call contract."""

    def __init__(self, plain, prompt_len, vocab, agree):
        self.plain, self.prompt_len, self.vocab, self.agree = plain, prompt_len, vocab, agree
        self.position, self.step = None, 0

    def __call__(self, token_embed, hidden, shared_kv, position):
        if position != self.position:
            self.position, self.step = position, 0
        self.step += 1
        i = position - self.prompt_len + self.step  # index in the output of the drafted token
        want = self.plain[i] if i < len(self.plain) else 0
        token = want if self.agree else (want + 1) % self.vocab
        return mx.eye(self.vocab)[token].reshape(1, 1, -1) * 10.0, hidden


@pytest.mark.parametrize("agree", [True, False])
def test_scripted_drafter_acceptance_is_all_or_nothing_and_output_exact(bundles, plain_runs, agree):
    base = bundles["dense"]
    want = plain_runs[40]
    b = Bundle(base.target, ScriptedDrafter(want, 40, 512, agree), base.tokenizer, "scripted")
    records = list(stream_generate(b, prompt(40), S(max_tokens=48, draft=4)))
    trace = [r.round_info.trace() for r in records if r.round_info]
    got, stats = [r.token for r in records], RunStats.from_records(records)
    assert got == want
    if agree:
        assert stats.acceptance_rate == 1.0 and stats.mean_accepted_per_round == stats.drafted / stats.rounds
        assert all(r["accepted"] == len(r["drafted"]) for r in trace)
    else:
        assert stats.accepted == 0 and stats.drafted > 0


def test_trace_positions_index_the_bonus_token(bundles):
    p = prompt(20)
    records = list(stream_generate(bundles["dense"], p, S(max_tokens=30, draft=3)))
    trace = [r.round_info.trace() for r in records if r.round_info]
    seq = p + [r.token for r in records]
    assert len(trace) == max(r.round for r in records)  # one entry per round
    pos = len(p)
    for r in trace:
        assert r["position"] == pos  # round's input token is seq[position]
        assert r["drafted"][: r["accepted"]] == seq[pos + 1 : pos + 1 + r["accepted"]]
        pos += r["accepted"] + 1


def test_closed_generator_leaves_cache_consistent_and_rerun_is_identical(bundles):
    b = bundles["dense"]
    pc = PromptCache(b)
    p = prompt(30)
    _, want, _ = generate(b, p, S(max_tokens=24, draft=3))
    gen = stream_generate(b, p, S(max_tokens=24, draft=3), prompt_cache=pc)
    for _ in range(13):
        next(gen)
    gen.close()
    assert cache_offset(pc.cache) == len(pc.tokens)
    assert pc.tokens[: len(p)] == p
    _, again, _ = generate(b, p, S(max_tokens=24, draft=3), prompt_cache=pc)
    assert again == want


def test_prompt_cache_prefills_only_new_tokens_and_stays_exact(bundles):
    b = bundles["centroid"]
    pc = PromptCache(b)
    first = prompt(25)
    _, out1, s1 = generate(b, first, S(max_tokens=12, draft=2), prompt_cache=pc)
    assert s1.prompt_tokens == 25
    second = first + out1[:-1] + [6, 19, 5, 50, 60]  # next turn: history + 5 new tokens
    _, out2, s2 = generate(b, second, S(max_tokens=20, draft=2), prompt_cache=pc)
    assert s2.prompt_tokens == 5
    _, fresh, _ = generate(b, second, S(max_tokens=20, draft=0))
    assert out2 == fresh


def test_stop_string_ends_generation_and_is_not_emitted(bundles):
    b = bundles["dense"]
    text, ids, _ = generate(b, prompt(10), S(max_tokens=40, draft=0))
    stop = text[10:14]
    assert stop and stop in text
    got, _, stats = generate(b, prompt(10), S(max_tokens=40, draft=3, stop=(stop,)))
    assert got == text[: text.index(stop)]
    assert stats.finish_reason == "stop"


def test_eos_token_stops_generation(bundles):
    b = bundles["dense"]
    _, ids, _ = generate(b, prompt(10), S(max_tokens=20, draft=0))
    saved = list(b.tokenizer.eos_token_ids)
    _, got, stats = generate(b, prompt(10), S(max_tokens=20, draft=3), stop_tokens={ids[5]})
    assert got == ids[: ids.index(ids[5]) + 1] and stats.finish_reason == "stop"
    assert list(b.tokenizer.eos_token_ids) == saved  # a parameter, never a change to the tokenizer


def test_prompt_longer_than_context_is_refused(bundles):
    with pytest.raises(SpecdecError, match=r"^the prompt has 50 tokens but the context holds 32; "):
        generate(bundles["dense"], prompt(50), S(max_tokens=5, max_context=32))


def test_generation_stops_when_context_is_full(bundles):
    _, ids, stats = generate(bundles["dense"], prompt(20), S(max_tokens=100, draft=4, max_context=40))
    assert stats.finish_reason == "length" and 20 + len(ids) <= 40


@pytest.mark.slow
def test_long_prompt_in_prefill_chunks_matches_one_pass_and_speculation_stays_exact(bundles):
    """A 600-token prompt crosses the prefill chunk (512) and the sliding cache's compaction."""
    from mlx_specdec.cache import make_target_cache

    b = bundles["dense"]
    p = prompt(600, seed=3)
    logits, _ = b.target(mx.array(p)[None], make_target_cache(b.target.config))  # one pass, no chunks
    _, plain, _ = generate(b, p, S(max_tokens=40, draft=0))
    assert plain[0] == int(mx.argmax(logits[0, -1]).item())
    for k in (3, "auto"):
        assert generate(b, p, S(max_tokens=40, draft=k))[1] == plain


def test_round_host_time_counts_what_the_host_does_between_syncs(bundles):
    """HostWait measures the time the device waits for the host: a caller that dawdles 50 ms
    between rounds shows up in the next round's host time, never in a negative or missing one."""
    import time

    from mlx_specdec.stats import HostWait

    records, host_wait = [], HostWait()
    for r in stream_generate(bundles["dense"], prompt(10), S(max_tokens=12, draft=2), host_wait=host_wait):
        records.append(r)
        time.sleep(0.05 if r.round_info is not None else 0.0)  # after each round's first token
    rounds = [r.round_info for r in records if r.round_info is not None]
    assert len(rounds) >= 3 and len(host_wait.waits) == len(rounds)
    assert all(w >= 0.05 for w in host_wait.waits[1:])
    assert all(r.seconds >= 0 for r in rounds) and all(w >= 0 for w in host_wait.waits)
