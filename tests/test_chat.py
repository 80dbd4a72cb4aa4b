"""`specdec chat`: the session logic against a fake loop, then the real command end to end."""

import io
import os
import re
import sys
import time
import json
from pathlib import Path
from types import SimpleNamespace

import pexpect  # test extra: drives the pseudo-terminal
import pyte  # test extra: renders what the terminal shows
import pytest

from mlx_specdec import chat
from mlx_specdec.chat import ChatSession, Settings, run_piped
from mlx_specdec.settings import parse_draft
from mlx_specdec.energy import NullSource
from mlx_specdec.errors import SpecdecError
from mlx_specdec.stats import TokenRecord


# ---------------------------------------------------------------------------------------------
# A fake loop with the real contract: common-prefix reuse of a PromptCache, one record per token.


class FakeTokenizer:
    chat_template = "yes"
    eos_token_ids = [1]

    def apply_chat_template(self, messages, add_generation_prompt=True):
        ids = [2]
        for m in messages:
            ids += [5] + [ord(c) for c in f"{m['role']}\n{m['content'].strip()}"] + [6]
        return ids + [5] + [ord(c) for c in "assistant\n"]

    def encode(self, text):
        return [ord(c) for c in text]


class FakeCache:
    def __init__(self, bundle):
        self.tokens = []


class FakeLoop:
    """Answers "echo: <last user text>" one character per token, then EOS."""

    def __init__(self):
        self.calls, self.closed = [], 0

    def __call__(self, bundle, prompt_ids, settings, *, prompt_cache):
        self.calls.append(SimpleNamespace(prompt=list(prompt_ids), draft=settings.draft, sampling=settings.sampling,
                                          max_tokens=settings.max_tokens, battery=settings.battery))
        return self._gen(prompt_ids, settings.max_tokens, settings.draft, prompt_cache)

    def _gen(self, ids, max_tokens, draft, pc):
        common = 0
        for a, b in zip(pc.tokens, ids[:-1]):
            if a != b:
                break
            common += 1
        new = len(ids) - common
        pc.tokens = list(ids)
        user = "".join(chr(t) for t in ids).split("user\n")[-1].split("\x06")[0]
        answer = [ord(c) for c in f"echo: {user}"][: max_tokens - 1] + [1]
        k = 2 if draft == "auto" else draft
        try:
            for i, tok in enumerate(answer):
                last = i == len(answer) - 1
                yield TokenRecord(
                    token=tok, text="" if tok == 1 else chr(tok), from_draft=bool(k) and i % 2 == 1,
                    round=(i + 1) // 2, draft_tokens=k if i else 0, accepted=1 if k else 0,
                    prompt_tokens=new, ttft_s=0.01, elapsed_s=0.01 * i,
                    finish_reason="stop" if last else None,
                )
                pc.tokens.append(tok)
        finally:
            self.closed += 1


def bundle(drafter=True):
    return SimpleNamespace(target=None, drafter=object() if drafter else None, tokenizer=FakeTokenizer(), name="fake")


@pytest.fixture(autouse=True)
def plain_sampling(monkeypatch):
    """Settings.sampling() builds the real SamplingParams; keep it, but never touch mlx memory."""
    monkeypatch.setattr(chat, "memory", lambda: (None, None))
    monkeypatch.setattr(chat, "reset_peak_memory", lambda: None)


def session(drafter=True, **settings):
    loop = FakeLoop()
    return ChatSession(bundle(drafter), Settings(**settings), stream_fn=loop, cache_factory=FakeCache), loop


def piped(s, text):
    out = io.StringIO()
    run_piped(s, io.StringIO(text), out, energy_source=NullSource())
    return out.getvalue()


def test_piped_mode_prints_each_answer_then_a_summary_line_and_stops_at_end_of_input():
    s, loop = session()
    out = piped(s, "hello\n\nhow are you\n").splitlines()
    assert out[0] == "echo: hello"
    assert out[1].startswith("12 tokens · ")  # 11 characters and EOS
    assert "prefill" in out[1] and "energy n/a" in out[1]
    assert out[2] == "echo: how are you"
    assert len(out) == 4 and len(loop.calls) == 2  # the blank line is skipped


def test_second_turn_sends_the_whole_conversation_and_prefills_only_the_new_turn():
    s, loop = session()
    piped(s, "hi\nagain\n")
    first, second = loop.calls
    assert second.prompt[: len(first.prompt)] == first.prompt
    # The cache holds the first prompt and the answer: only what follows is prefilled.
    assert s.last.records[0].prompt_tokens == len(second.prompt) - len(first.prompt) - len("echo: hi")
    assert s.last.prompt_len == len(second.prompt)
    assert [m["role"] for m in s.messages] == ["user", "assistant", "user", "assistant"]
    assert s.messages[1]["content"] == "echo: hi"  # no EOS text


def test_slash_commands_change_the_next_turn():
    s, loop = session()
    out = piped(s, "/draft 3\na\n/draft off\nb\n/draft auto\n/temp 0.7\nc\n/help\n")
    assert [c.draft for c in loop.calls] == [3, 0, "auto"]
    assert loop.calls[2].sampling.temp == 0.7
    assert "draft length: 3" in out and "draft length: off" in out and "temperature: 0.7" in out
    assert "/save FILE" in out  # the help text


def test_reset_forgets_the_conversation_and_the_cache():
    s, loop = session()
    piped(s, "a\n")
    cache = s.prompt_cache
    assert piped(s, "/reset\n").strip() == "conversation and prompt cache cleared"
    assert s.messages == [] and s.prompt_cache is not cache
    piped(s, "b\n")
    assert s.last.records[0].prompt_tokens == len(loop.calls[-1].prompt)


def test_save_writes_the_conversation_as_json(tmp_path):
    s, _ = session(system="be brief")
    piped(s, f"hi\n/save {tmp_path / 'c.json'}\n")
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["model"] == "fake"
    assert data["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "echo: hi"},
    ]
    assert data["settings"]["draft"] == "auto"


def test_save_to_an_unwritable_path_is_a_one_line_error_and_the_chat_goes_on(tmp_path, capsys):
    s, loop = session()
    bad = tmp_path / "no" / "such" / "dir.json"
    with pytest.raises(SpecdecError, match="cannot write"):
        s.command(f"/save {bad}")
    out = piped(s, f"/save {bad}\n/draft 9\nhi\n")
    assert capsys.readouterr().err.splitlines() == [
        f"error: {bad}: cannot write (No such file or directory)",
        "error: draft tokens must be 0-8, 'auto' or 'off', not '9'",
    ]
    assert out.startswith("echo: hi") and len(loop.calls) == 1


def test_quit_stops_reading_input():
    s, loop = session()
    out = piped(s, "a\n/quit\nb\n")
    assert out.rstrip().endswith("bye") and len(loop.calls) == 1


def test_stats_in_piped_mode_repeats_the_last_summary():
    s, _ = session()
    out = piped(s, "a\n/stats\n").splitlines()
    assert out[-1] == out[-2]


def test_stopping_an_answer_closes_the_loop_and_keeps_the_partial_answer():
    s, loop = session()
    reply = s.reply("tell me a story")
    pieces = [next(reply).text for _ in range(3)]
    reply.close()  # what Ctrl-C does
    assert loop.closed == 1
    assert s.messages[-1] == {"role": "assistant", "content": "".join(pieces)}
    piped(s, "more\n")  # the chat goes on
    assert s.messages[-1]["content"] == "echo: more"


def test_without_a_drafter_decoding_is_plain_and_draft_cannot_be_turned_on():
    s, loop = session(drafter=False)
    assert "no drafter loaded" in piped(s, "/draft 4\na\n")
    assert loop.calls[0].draft == 0


def test_plain_turns_give_the_speed_up_baseline():
    s, _ = session()
    piped(s, "/draft off\nplain\n")
    assert s.plain_tokens_per_s and s.plain_tokens_per_s > 0
    out = piped(s, "/draft auto\nspec\n")
    assert "speed-up 1.00x" in out  # the fake runs at one speed


def test_unknown_command_and_bad_arguments_explain_themselves():
    s, _ = session()
    out = piped(s, "/frobnicate\n/temp hot\n/save\n")
    assert "unknown command /frobnicate; /help lists them" in out
    assert "/temp needs a finite number >= 0, not 'hot'" in out
    assert "/save needs a file name" in out


def test_parse_draft():
    assert parse_draft("auto") == "auto" and parse_draft("off") == 0 and parse_draft("4") == 4
    with pytest.raises(SpecdecError, match=r"^draft tokens must be 0-8, 'auto' or 'off', not 'many'$"):
        parse_draft("many")
    with pytest.raises(SpecdecError, match=r"^draft tokens must be 0-8, 'auto' or 'off', not '9'$"):
        parse_draft("9")


# ---------------------------------------------------------------------------------------------
# The real loop on the tiny fixture pair (random weights: the text is noise, the mechanics real).

FIXTURES = Path(__file__).parent / "fixtures"
PAIR = dict(target=str(FIXTURES / "target_text"), drafter=str(FIXTURES / "drafter_dense"))


def common_prefix(a, b):
    n = 0
    for x, y in zip(a, b[:-1]):  # the loop always runs the last prompt token again
        if x != y:
            break
        n += 1
    return n


def test_real_loop_second_turn_prefills_only_what_the_cache_does_not_hold():
    from mlx_specdec.load import load

    s = ChatSession(load(**PAIR), Settings(max_tokens=12))
    first = list(s.reply("hello there"))
    assert first[0].prompt_tokens == s.last.prompt_len  # a fresh cache: everything prefilled
    held = list(s.prompt_cache.tokens)
    assert held[: s.last.prompt_len] == s.last.prompt
    second = list(s.reply("and again"))
    reused = common_prefix(held, s.last.prompt)
    assert reused > len(held) // 2
    assert second[0].prompt_tokens == s.last.prompt_len - reused


def test_piped_specdec_chat_prints_answers_and_summaries_and_exits_at_end_of_input():
    import subprocess

    argv = specdec("chat", "--target", PAIR["target"], "--drafter", PAIR["drafter"], "--max-tokens", "12")
    done = subprocess.run(argv, input="hello there\n/draft off\nand again\n", capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    summaries = [l for l in lines if " tokens · " in l]
    assert len(summaries) == 2 and "draft length: off" in lines
    assert summaries[0].startswith("12 tokens · ") and "prefill 18 ·" in summaries[0]
    assert "(+" in summaries[1] and "cached)" in summaries[1] and "draft off" in summaries[1]


# ---------------------------------------------------------------------------------------------
# Through a pseudo-terminal: what the screen shows (pexpect drives it, pyte renders the screen).


class Terminal:
    """A child process on a pty of `rows` x `cols`, with a pyte screen fed from its output."""

    def __init__(self, argv, rows=45, cols=100):
        env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR")}
        env.update(TERM="xterm-256color", PYTHONUNBUFFERED="1")
        self.child = pexpect.spawn(
            argv[0], argv[1:], dimensions=(rows, cols), env=env, encoding="utf-8", codec_errors="replace"
        )
        self.screen = pyte.HistoryScreen(cols, rows, history=1000)
        self.stream = pyte.Stream(self.screen)
        self.raw = ""
        self._eof = pexpect.EOF

    def text(self) -> str:
        """The whole screen including what scrolled off the top."""
        history = ["".join(ch.data for ch in line.values()) for line in self.screen.history.top]
        return "\n".join(l.rstrip() for l in history + self.screen.display)

    def wait_for(self, pattern, timeout=60.0):
        """Feed output until `pattern` (a regex) shows on the screen; return the match."""
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(pattern, self.text())
            if m:
                return m
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on screen after {timeout}s:\n{self.text()}")
            try:
                chunk = self.child.read_nonblocking(65536, timeout=0.2)
            except self._eof:
                raise AssertionError(f"exited before {pattern!r} showed:\n{self.text()}")
            except Exception:  # pexpect.TIMEOUT
                continue
            self.raw += chunk
            self.stream.feed(chunk)

    def send(self, line):
        self.child.sendline(line)

    def quit(self):
        """/quit, then the process must say bye and exit 0."""
        self.send("/quit")
        self.wait_for(r"bye")
        self.child.expect(self._eof, timeout=20)
        self.child.close()
        assert self.child.exitstatus == 0


def specdec(*args):
    """`specdec ARGS` without relying on the console script being installed."""
    return [sys.executable, "-c", "from mlx_specdec.cli import app; app()", *args]


def test_terminal_chat_shows_answer_panel_commands_and_survives_ctrl_c():
    term = Terminal(specdec("chat", "--target", PAIR["target"], "--drafter", PAIR["drafter"], "--max-tokens", "1500"))
    try:
        term.wait_for(r"/help for commands")
        term.send("/draft 2")
        term.wait_for(r"draft length: 2")

        # An answer (12 tokens, then the fixture's end of turn), then the one-line summary.
        term.send("hello there")
        first = term.wait_for(r"› hello there\n(.+)\n12 tokens · .* · prefill 18 · draft 2").group(1)
        term.send("/stats")
        panel = term.wait_for(r"(?s)╭─ specdec ─.*?╰─+╯").group(0)
        for label in ("decode", "TTFT", "prefill", "draft length", "accepted/round", "accepted drafts per round"):
            assert label in panel, label
        assert re.search(r"battery\s+n/a", panel)  # no battery on this machine
        assert re.search(r"speed-up\s+n/a", panel)  # no plain turn measured yet

        # A long answer: the live panel shows while it streams; Ctrl-C stops it, the chat goes on.
        term.send("tell me a story")
        term.wait_for(r"new tokens \(\d+ reused from cache\)")  # only the live panel of this turn says so
        term.child.sendintr()
        term.wait_for(r"\(stopped; the chat goes on\)")
        summary = term.wait_for(r"(\d+) tokens · [^›]*\(stopped").group(1)
        assert 0 < int(summary) < 1500
        # Clean caches after the stop: the first answer comes back token for token.
        term.send("/reset")
        term.send("hello there")
        term.wait_for(r"(?s)\(stopped.*› hello there\n" + re.escape(first) + r"\n12 tokens · [^\n]* · prefill 18 · draft 2")
        term.quit()
    finally:
        term.child.close(force=True)


def test_terminal_chat_on_the_demo_pair_shows_real_acceptance_and_obeys_draft_commands():
    term = Terminal(specdec("chat", "--demo", "--max-tokens", "60", "--draft-tokens", "4"))
    try:
        term.wait_for(r"/help for commands")
        term.send("Explain `argparse.ArgumentTypeError`.")  # held out of the demo's training corpus
        m = term.wait_for(r"(\d+) tokens · [^\n]* · draft 4 · ([\d.]+) accepted/round")
        assert int(m.group(1)) > 10 and float(m.group(2)) > 1.0  # the demo drafter is good
        term.send("/stats")
        panel = term.wait_for(r"(?s)╭─ specdec ─.*?╰─+╯").group(0)
        assert re.search(r"draft length\s+4", panel) and "accepted drafts per round" in panel
        term.send("/draft off")
        term.wait_for(r"draft length: off")
        term.send("What does `len` do?")
        term.wait_for(r"\d+ tokens · [^\n]* · prefill \d+ \(\+\d+ cached\) · draft off")
        term.quit()
    finally:
        term.child.close(force=True)
