"""`specdec chat`: the front ends against a fake loop, then the real command end to end.

The session itself (history, commands, context, /save) is tested in test_session.py.
"""

import io
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pexpect  # test extra: drives the pseudo-terminal
import pyte  # test extra: renders what the terminal shows
import pytest

from mlx_specdec.chat import terminal as chat
from mlx_specdec.energy import EnergyCounter, IOReportSource, NullSource, Sample

from .helpers.chat import FakeCache, FakeLoop, bundle, piped, session


@pytest.fixture(autouse=True)
def no_mlx_memory(monkeypatch):
    """The front ends read mlx memory for the panel; the fake loop never touches mlx."""
    monkeypatch.setattr(chat, "memory", lambda: (None, None))
    monkeypatch.setattr(chat, "reset_peak_memory", lambda: None)


def test_piped_mode_prints_each_answer_then_a_summary_line_and_stops_at_end_of_input():
    s, loop = session()
    out = piped(s, "hello\n\nhow are you\n").splitlines()
    assert out[0] == "echo: hello"
    assert out[1].startswith("12 tokens · ")  # 11 characters and EOS
    assert "prefill" in out[1] and "energy n/a" in out[1]
    assert out[2] == "echo: how are you"
    assert len(out) == 4 and len(loop.calls) == 2  # the blank line is skipped


def test_piped_answer_shorter_than_one_counter_period_reports_no_energy_instead_of_zero():
    """A source that publishes in batches and has not published during the answer."""
    counter = EnergyCounter("CPU Energy", "mJ", 1_000, published=1.0)
    source = IOReportSource(SimpleNamespace(sample=lambda: Sample(1.5, (counter,))))
    s, _ = session()
    out = io.StringIO()
    chat.run_piped(s, io.StringIO("hello\n"), out, energy_source=source)
    assert "energy n/a (under one counter period)" in out.getvalue().splitlines()[1]


def test_save_to_an_unwritable_path_is_a_one_line_error_and_the_chat_goes_on(tmp_path, capsys):
    s, loop = session()
    bad = tmp_path / "no" / "such" / "dir.json"
    action = s.command(f"/save {bad}")
    assert action.error and action.message == f"{bad}: cannot write (No such file or directory)"
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


# ---------------------------------------------------------------------------------------------
# Bad input in piped mode: one error line on stderr, then the next line is answered.


def test_piped_line_that_is_not_utf8_is_refused_in_one_line_and_the_next_is_answered(capsys):
    s, loop = session()
    out = piped(s, b"hello\n\xff\xfe caf\xe9\nagain\n")
    assert capsys.readouterr().err.splitlines() == [
        "error: input line 2 is not UTF-8 text; skipped it (save the input as UTF-8)"
    ]
    assert out.splitlines()[0] == "echo: hello" and out.splitlines()[2] == "echo: again"
    assert len(loop.calls) == 2 and [m["content"] for m in s.messages if m["role"] == "user"] == ["hello", "again"]


def test_piped_line_with_surrogate_escapes_is_refused_like_raw_bytes(capsys):
    s, loop = session()
    piped(s, "bad \udcff\nok\n")  # what Python's surrogateescape makes of undecodable bytes
    assert capsys.readouterr().err.splitlines() == [
        "error: input line 1 is not UTF-8 text; skipped it (save the input as UTF-8)"
    ]
    assert len(loop.calls) == 1


def test_piped_turn_the_loop_refuses_is_one_error_line_and_the_next_line_is_answered(capsys):
    s, loop = session()
    out = piped(s, "hello\nplease REFUSE\nagain\n")
    assert capsys.readouterr().err.splitlines() == ["error: the loop refuses this prompt"]
    assert [line for line in out.splitlines() if line.startswith("echo")] == ["echo: hello", "echo: again"]
    assert [m["content"] for m in s.messages if m["role"] == "user"] == ["hello", "again"]


def test_system_prompt_that_is_not_utf8_is_decoded_with_replacement_like_every_argument(tmp_path):
    loop = FakeLoop()
    out = io.StringIO()
    # Python hands undecodable argv bytes over as lone surrogates (surrogateescape).
    chat.run_chat(
        demo=True,
        system="be \udcff brief",
        stdin=io.StringIO(f"hi\n/save {tmp_path / 'c.json'}\n"),
        stdout=out,
        load_fn=lambda *a, **k: bundle(),
        stream_fn=loop,
        cache_factory=FakeCache,
    )
    assert "".join(chr(t) for t in loop.calls[0].prompt).startswith("\x02\x05system\nbe \ufffd brief\x06")
    assert out.getvalue().startswith("echo: hi\n")
    assert out.getvalue().endswith(f"saved 3 messages to {tmp_path / 'c.json'}\n")
    assert json.loads((tmp_path / "c.json").read_text())["messages"][0]["content"] == "be \ufffd brief"


def test_live_chat_refuses_bad_lines_in_one_line_each_and_answers_the_next():
    from rich.console import Console

    s, loop = session(max_context=60, max_tokens=8)
    lines = iter(["hi", "bad \udcff", "x" * 200, "/temp 2", "REFUSE this", "/draft 9", "again"])

    def read_line(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    console = Console(record=True, width=200, file=io.StringIO())
    chat.run_interactive(s, console, energy_source=NullSource(), read_line=read_line)
    text = console.export_text()
    errors = [line for line in text.splitlines() if line.startswith("error: ")]
    assert errors == [
        "error: that line is not UTF-8 text; skipped it",
        f"error: this message needs {len(s.prompt_ids([{'role': 'user', 'content': 'x' * 200}]))} tokens "
        "and its answer at least one more, but the context holds 60; "
        "it was not added: shorten it or raise --max-context",
        "error: the loop refuses this prompt",
        "error: draft tokens must be 0-8, 'auto' or 'off', not '9'",
    ]
    assert "Traceback" not in text and text.rstrip().endswith("bye")
    assert [m["content"] for m in s.messages if m["role"] == "user"] == ["hi", "again"]
    assert s.settings.sampling.temp == 2.0 and len(loop.calls) == 3


def test_a_ctrl_d_read_as_a_line_without_readline_leaves_the_chat():
    from rich.console import Console

    s, loop = session()
    lines = iter(["hi", "\x04"])
    console = Console(record=True, width=200, file=io.StringIO())
    chat.run_interactive(s, console, energy_source=NullSource(), read_line=lambda prompt: next(lines))
    assert console.export_text().rstrip().endswith("bye") and len(loop.calls) == 1


# What the terminal does with keys typed while an answer streams: a child process enters the same
# context as the live answer, waits until the keys are queued, leaves it, then reads a line with
# readline as the chat's prompt does.
TYPEAHEAD_CHILD = """
import readline, select, sys
from mlx_specdec.chat.terminal import typeahead_kept
with typeahead_kept():
    print("STREAMING", flush=True)
    select.select([sys.stdin], [], [], 20)
try:
    print("GOT", repr(input("> ")), flush=True)
except EOFError:
    print("END OF INPUT", flush=True)
"""


@pytest.mark.parametrize(
    "keys, want", [("\x04", "END OF INPUT"), pytest.param("hello\r", "GOT 'hello'", marks=pytest.mark.slow)]
)
@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_keys_typed_while_an_answer_streams_reach_the_next_prompt_ctrl_d_included(keys, want):
    child = pexpect.spawn(sys.executable, ["-c", TYPEAHEAD_CHILD], encoding="utf-8", timeout=10)
    try:
        child.expect("STREAMING")
        child.send(keys)
        child.expect(["END OF INPUT", r"GOT '.*'"])
        assert child.after == want
    finally:
        child.close(force=True)


# ---------------------------------------------------------------------------------------------
# The real loop on the tiny fixture pair (random weights: the text is noise, the mechanics real).

FIXTURES = Path(__file__).parent / "fixtures"
PAIR = dict(target=str(FIXTURES / "target_text"), drafter=str(FIXTURES / "drafter_dense"))


@pytest.mark.slow
def test_piped_specdec_chat_prints_answers_and_summaries_and_exits_at_end_of_input():
    argv = specdec("chat", "--target", PAIR["target"], "--drafter", PAIR["drafter"], "--max-tokens", "12")
    text = "hello there\n/draft off\nand again\n"
    done = subprocess.run(argv, input=text, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    summaries = [line for line in lines if " tokens · " in line]
    assert len(summaries) == 2 and "draft length: off" in lines
    assert summaries[0].startswith("12 tokens · ") and "prefill 18 ·" in summaries[0]
    assert "(+" in summaries[1] and "cached)" in summaries[1] and "draft off" in summaries[1]


@pytest.mark.slow
def test_piped_specdec_chat_survives_bad_bytes_and_an_overlong_message_and_drops_old_turns():
    argv = specdec(
        "chat", "--target", PAIR["target"], "--drafter", PAIR["drafter"], "--max-tokens", "12", "--max-context", "40"
    )
    lines = [b"hello there", b"caf\xe9 \xff", b"word " * 60, b"and again", b"more"]
    done = subprocess.run(argv, input=b"\n".join(lines) + b"\n", capture_output=True, timeout=120)
    err, out = done.stderr.decode(), done.stdout.decode()
    assert done.returncode == 0 and "Traceback" not in err, err
    problems = err.splitlines()
    assert problems[0] == "error: input line 2 is not UTF-8 text; skipped it (save the input as UTF-8)"
    assert re.fullmatch(
        r"error: this message needs \d+ tokens and its answer at least one more, but the context holds 40; "
        r"it was not added: shorten it or raise --max-context",
        problems[1],
    ), problems
    assert len(problems) == 2
    summaries = [line for line in out.splitlines() if " tokens · " in line]
    assert len(summaries) == 3  # hello there, and again, more: each answered
    assert "oldest messages dropped to fit the context" not in summaries[0]
    assert "2 oldest messages dropped to fit the context" in summaries[1]  # the first turn made room


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
        return "\n".join(row.rstrip() for row in history + self.screen.display)

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
                raise AssertionError(f"exited before {pattern!r} showed:\n{self.text()}") from None
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
    return [sys.executable, "-c", "from mlx_specdec.__main__ import main; main()", *args]


@pytest.mark.slow
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
        term.wait_for(
            r"(?s)\(stopped.*› hello there\n" + re.escape(first) + r"\n12 tokens · [^\n]* · prefill 18 · draft 2"
        )
        term.quit()
    finally:
        term.child.close(force=True)


@pytest.mark.slow
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
