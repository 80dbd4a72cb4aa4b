"""The server's prompt-cache pool through the real worker on the demo pair (no HTTP).

The prompts are longer than the demo's sliding window (128 tokens) and the answers long enough
that the window moves past the prompt's end: what an entry can still give back then matters.
Jobs are queued as `serve/stream.Run` queues a chat request (a snapshot of the prompt, the next
turn's prefix from the answer).
"""

import threading

import pytest

from mlx_specdec.cache import common_prefix
from mlx_specdec.load import load
from mlx_specdec.prompt import chat_ids
from mlx_specdec.serve.worker import Done, Failed, Job, Worker
from mlx_specdec.settings import GenerationSettings

ING = 288  # 'ing' in the demo vocabulary: repeated, it re-tokenises as generated
SYSTEM = {"role": "system", "content": "You review diffs for one Python codebase, carefully. " * 12}


@pytest.fixture(scope="module")
def worker():
    w = Worker(lambda: load(demo=True), max_queue=4)
    w.start_and_wait()
    yield w
    w.stop()


def chat(worker, messages, max_tokens, draft=2, forced=True) -> tuple[list[int], int, str]:
    """(prompt ids, cached prompt tokens, answer) of one chat job, its answer forced to 'ing'
    (unless not `forced`: then the loop issues plain rounds ahead, as it does without a bias)."""
    tok = worker.bundle.tokenizer
    ids = chat_ids(tok, messages)
    items, done = [], threading.Event()

    def emit(item):
        items.append(item)
        if isinstance(item, (Done, Failed)):
            done.set()

    def next_turn(text):
        return chat_ids(tok, [*messages, {"role": "assistant", "content": text}], add_generation_prompt=False)

    settings = GenerationSettings(max_tokens=max_tokens, draft=draft, logit_bias=((ING, 100.0),) if forced else ())
    worker.submit(Job(ids, emit, settings, next_turn=next_turn, snapshot=True))
    assert done.wait(30) and isinstance(items[-1], Done), items[-1]
    return ids, items[-1].cached_tokens, "".join(r.text for r in items[:-1])


def test_a_retry_an_edit_and_another_session_reuse_the_prompt_after_the_window_moved_past_it(worker):
    talk = [SYSTEM, {"role": "user", "content": "Review: def add(a, b): return a - b"}]
    ids, _, answer = chat(worker, talk, 64)
    assert len(ids) > 128 and answer == "ing" * 64
    _, cached, _ = chat(worker, talk, 2)  # the same request again
    assert cached == len(ids) - 1  # all but the last id, which runs again
    edited = [SYSTEM, {"role": "user", "content": "Review: def sub(a, b): return a + b"}]
    edited_ids, cached, _ = chat(worker, edited, 2)
    assert cached == common_prefix(ids, edited_ids)
    other = [SYSTEM, {"role": "user", "content": "A side question: name this session."}]
    other_ids, cached, _ = chat(worker, other, 2)  # another session on the same system prompt
    assert cached == common_prefix(ids, other_ids) > 128


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_each_turn_extends_the_last_answer(worker):
    talk = [{"role": "system", "content": "You plan refactors of one Python codebase. " * 12}]
    previous = None
    for turn in range(3):
        talk.append({"role": "user", "content": f"Step {turn}?"})
        ids, cached, answer = chat(worker, talk, 12)
        if previous is not None:  # the previous prompt and answer, but its last token, which never ran
            assert cached >= previous + 12 - 1, (turn, cached, previous)
        talk.append({"role": "assistant", "content": answer})
        previous = len(ids)


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_a_second_session_after_a_prompt_of_a_whole_prefill_chunk_reuses_the_shared_system_prompt(worker):
    """A prompt of 256+ tokens fills a sliding buffer in one write. The next write compacted it to
    its last window + 17 positions, so a session whose prompt leaves this one's 20+ tokens before
    its end could not be given the shared prefix (cached 0 of 460 in the probe)."""
    system = {"role": "system", "content": "You are the reviewer of one large Python codebase. " * 30}
    ask = "{}, step 0: fix the bug in module_0.py and keep the edit small"  # differs 20+ tokens from the end
    first = [system, {"role": "user", "content": ask.format("Agent A")}]
    first_ids, _, _ = chat(worker, first, 6, draft=0, forced=False)
    assert len(first_ids) > 256
    second = [system, {"role": "user", "content": ask.format("Agent B")}]
    second_ids, cached, _ = chat(worker, second, 2, forced=False)
    assert cached == common_prefix(first_ids, second_ids) > 256


def test_a_new_session_after_a_long_conversation_still_takes_the_shared_system_prompt(worker):
    """Short turns: the conversation's sliding windows move on during a turn's prefill, so every
    later prompt snapshot reaches back only a window; the snapshot of an early turn must still be
    there (a conversation's entry, which keeps growing, never drops it) for a later session."""
    system = {"role": "system", "content": "You maintain the tests of one Python codebase. " * 14}
    talk = [system]
    for turn in range(10):
        talk.append({"role": "user", "content": f"Step {turn}: which test in tests/test_module_{turn}.py fails?"})
        ids, _, answer = chat(worker, talk, 6)
        talk.append({"role": "assistant", "content": answer})
    assert len(ids) > len(chat_ids(worker.bundle.tokenizer, talk[:2])) + 256  # the windows moved on
    side = [system, {"role": "user", "content": "A side question: name this session."}]
    side_ids, cached, _ = chat(worker, side, 2)
    assert cached == common_prefix(ids, side_ids) > 128
