"""`specdec chat`: the terminal front ends of a `ChatSession`, live in a terminal or piped.

- `run_piped`: one prompt per input line, the answer as it streams, then a one-line summary.
  A bad line (not UTF-8, a turn the loop refuses, a bad command argument) prints one
  `error: ...` line on stderr and the session reads on; the exit status stays 0.
- `run_interactive`: the Rich live view (`ui.ChatView`): the answer streams above the status
  panel; Ctrl-C stops the answer, Ctrl-D or /quit leaves (a Ctrl-D typed while an answer
  streams leaves once it ends, as any typeahead waits for the next prompt).
- `run_chat` picks the model (MODEL, --target/--drafter, --demo, or the cached Gemma 4 E2B
  bundle, converted on first use) and the front end: live when stdin and stdout are terminals.
  Under `mlx.launch` with several processes (distributed.py) the chat is piped: rank 0 reads the
  lines and prints; every rank gets the same lines and runs the same turns on its part of the
  model, in step (each turn's prompt ids and seed broadcast by `Spmd.stream_generate`).
Both front ends act on the `session.Action` a slash command returns; the conversation, the
settings and the commands themselves live in `session.py`, machine readings in `energy.py`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from typing import Optional, TextIO, Union

from ..energy import EnergyMeter, battery, detect_energy_source, memory, reset_peak_memory
from ..errors import SpecdecError
from ..numerics import notes
from ..provision import (  # noqa: F401  (moved to provision; imported here for existing callers)
    DEFAULT_BUNDLE,
    DEFAULT_DRAFTER,
    DEFAULT_TARGET,
    cache_dir,
    default_bundle,
    hub_reachable,
)
from ..settings import GenerationSettings, draft_label
from .session import CHAT_SETTINGS, Action, ChatOptions, ChatSession
from .view import ChatView, ParsedAnswer, Status, status_panel, summary_line

STATUS_INTERVAL_S = 0.25  # how often energy and memory are re-read while an answer streams


def utf8_text(line: Union[str, bytes]) -> Optional[str]:
    """The line as text, or None when it is not UTF-8 (raw bytes, or a str carrying the
    surrogate escapes Python uses for undecodable input and arguments)."""
    try:
        if isinstance(line, bytes):
            return line.decode("utf-8")
        line.encode("utf-8")
        return line
    except UnicodeError:
        return None


def _status(session: ChatSession, meter: Optional[EnergyMeter], batt) -> Status:
    active, peak = memory()
    energy = meter.reading() if meter else None  # one read of the source for all three numbers
    return Status(
        draft=draft_label(session.settings.draft),
        plain_tokens_per_s=session.plain_tokens_per_s,
        active_memory_bytes=active,
        peak_memory_bytes=peak,
        energy_joules=energy.joules if energy else None,
        energy_watts=energy.watts if energy else None,
        energy_measuring=energy.measuring if energy else False,
        energy_source=meter.source.name if meter else "n/a",
        battery=batt,
        context_limit=session.context_limit,
        dropped_messages=session.last.dropped,
    )


# ---------------------------------------------------------------------------------------------
# Piped: one prompt per line.


def run_piped(session: ChatSession, lines: Iterable[Union[str, bytes]], out: TextIO, energy_source=None) -> None:
    """One prompt per line (text or bytes): print the answer as it streams, then one summary line."""
    source = energy_source or detect_energy_source()

    def error(message: str) -> None:
        print(f"error: {message}", file=sys.stderr, flush=True)

    for number, line in enumerate(lines, start=1):
        text = utf8_text(line)
        if text is None:
            error(f"input line {number} is not UTF-8 text; skipped it (save the input as UTF-8)")
            continue
        text = text.strip()
        if not text:
            continue
        action = session.line_action(text)  # a slash command, or a pasted image path
        if action is not None:
            if action.error:
                error(action.message)
            elif action.stats:
                print(summary_line(session.last.records, session.last.status, session.last.prompt_len), file=out)
            elif action.message:
                print(action.message, file=out, flush=True)
            out.flush()
            if action.quit:
                return
            continue
        reset_peak_memory()
        wrote = False
        try:
            answer, shown = ParsedAnswer(), 0  # Gemma 4's markup (thinking, tool calls) is never printed
            with EnergyMeter(source) as meter:
                for record in session.reply(text):
                    answer.add(record)
                    out.write("".join(t for t, _ in answer.pieces[shown:]))
                    out.flush()
                    shown, wrote = len(answer.pieces), True
            answer.finish()
            out.write("".join(t for t, _ in answer.pieces[shown:]))
        except SpecdecError as e:  # the turn is not kept: say so and answer the next line
            if wrote:
                out.write("\n")
                out.flush()
            error(str(e))
            continue
        session.last.status = _status(session, meter, battery())
        out.write("\n")
        print(summary_line(session.last.records, session.last.status, session.last.prompt_len), file=out, flush=True)


# ---------------------------------------------------------------------------------------------
# Interactive: the Rich live view.


def run_interactive(session: ChatSession, console, energy_source=None, read_line: Callable[[str], str] = input) -> None:
    """The live view: read a line, stream the answer above the status panel, repeat."""
    source = energy_source or detect_energy_source()
    _header(session, console, source)
    while True:
        try:
            console.print()
            text = utf8_text(read_line("› "))
        except EOFError:
            console.print("bye", style="dim")
            return
        except KeyboardInterrupt:
            console.print("\n(/quit or Ctrl-D to leave)", style="dim")
            continue
        except UnicodeDecodeError:
            text = None
        if text is not None and text.startswith("\x04"):  # Ctrl-D typed ahead, read without readline
            console.print("bye", style="dim")
            return
        if text is None:
            console.print("error: that line is not UTF-8 text; skipped it", style="red", highlight=False)
            continue
        text = text.strip()
        if not text:
            continue
        action = session.line_action(text)  # a slash command, or a pasted image path
        if action is not None:
            if _act(session, console, action):
                return
            continue
        _answer(session, console, text, source)


def _act(session: ChatSession, console, action: Action) -> bool:
    """Show what a slash command says -> whether to leave."""
    if action.error:
        console.print(f"error: {action.message}", style="red", highlight=False, markup=False)
    elif action.stats:
        last = session.last
        console.print(status_panel(last.records, last.status, last.prompt_len))
    elif action.message:
        console.print(action.message, style="dim", highlight=False, markup=False)
    return action.quit


def _answer(session: ChatSession, console, text: str, source) -> None:
    reset_peak_memory()
    batt = battery()
    try:
        reply = session.reply(text)
    except SpecdecError as e:  # does not fit the context: nothing was added
        console.print(f"error: {e}", style="red", highlight=False, markup=False)
        return
    meter = EnergyMeter(source).start()
    view = ChatView(
        console,
        status=_status(session, meter, batt),
        colour_drafts=session.options.colour_drafts,
        prompt_len=session.last.prompt_len,
    )
    interrupted = False
    try:
        with typeahead_kept(), view:
            next_status = 0.0
            for record in reply:
                view.add(record)
                now = time.perf_counter()
                if now >= next_status:  # energy and memory reads are cheap, but not per token
                    view.status = _status(session, meter, batt)
                    next_status = now + STATUS_INTERVAL_S
            meter.stop()
            view.status = _status(session, meter, batt)
    except KeyboardInterrupt:
        interrupted = True
    except SpecdecError as e:
        console.print(f"error: {e}", style="red", highlight=False, markup=False)
    finally:
        reply.close()
        meter.stop()
    session.last.status = view.status
    if interrupted:
        console.print("(stopped; the chat goes on)", style="yellow")


@contextlib.contextmanager
def typeahead_kept():
    """While an answer streams, keystrokes must neither land inside the live region nor be lost:
    echo and canonical mode are off until it is gone, so what is typed (Ctrl-D included) waits as
    plain bytes for the next prompt. In canonical mode the terminal would turn a Ctrl-D into an
    empty end of line that the next read never sees as end of file; as a byte, readline reads it
    as end of file on an empty line. Ctrl-C still interrupts (signals stay on)."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except Exception:  # not a POSIX terminal: nothing to keep
        saved = None
    if saved is not None:
        quiet = list(saved)
        quiet[3] &= ~(termios.ECHO | termios.ICANON | getattr(termios, "ECHOCTL", 0))
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _header(session: ChatSession, console, source) -> None:
    from rich.panel import Panel

    b, sampling = session.bundle, session.settings.sampling
    rows = [
        ("model", b.name),
        ("drafter", "yes" if b.drafter is not None else "none (plain decoding)"),
        ("draft length", draft_label(session.settings.draft)),
        ("sampling", f"temp {sampling.temp:g}" + (f", seed {sampling.seed}" if sampling.seed is not None else "")),
        ("context", f"{session.context_limit} tokens"),
        ("energy", source.name),
    ]
    verdict = getattr(b, "numerics", None)
    if verdict is not None:  # this device's pass widths (probe.py); `specdec check` tells more
        rows.append(("exactness", verdict.summary()))
    body = "\n".join(f"[dim]{k:<13}[/dim]{v}" for k, v in rows)
    console.print(Panel(body, title="specdec chat", title_align="left", border_style="blue", expand=False))
    console.print("/help for commands, Ctrl-C stops an answer, Ctrl-D leaves", style="dim")


def run_chat(
    model: Optional[str] = None,
    *,
    target: Optional[str] = None,
    drafter: Optional[str] = None,
    demo: bool = False,
    settings: GenerationSettings = CHAT_SETTINGS,
    system: Optional[str] = None,
    colour_drafts: bool = False,
    thinking: bool = False,
    stdin: Optional[TextIO] = None,
    stdout: Optional[TextIO] = None,
    load_fn=None,
    stream_fn=None,
    cache_factory=None,
    parallel: str = "tensor",
) -> None:
    """Chat with a model: live on a terminal, one prompt per line otherwise (and always under
    `mlx.launch` with several processes, the model split as `parallel` says). Raises SpecdecError."""
    from rich.console import Console

    from ..distributed import start

    run = start(parallel)  # several processes under mlx.launch; else nothing changes
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty() and run.size == 1
    console = Console(file=stdout, highlight=False) if interactive else Console(file=sys.stderr, highlight=False)
    if load_fn is None:
        from ..load import load as load_fn
    if model is None and target is None and not demo:
        model = str(default_bundle(console=console))
    split = {"split": run.split} if run.size > 1 else {}  # this process's part of the target
    if interactive:
        with console.status("loading the model ..."):  # one process: never split
            bundle = load_fn(model, target=target, drafter=drafter, demo=demo)
    else:
        bundle = load_fn(model, target=target, drafter=drafter, demo=demo, **split)
    if run.size > 1 and stream_fn is None:

        def stream_fn(bundle, ids, settings, *, prompt_cache, media=None):  # in step on every rank
            return run.stream_generate(bundle, ids, settings, prompt_cache=prompt_cache, media=media)

        run.agree_numerics(bundle)  # measured on every process, one verdict for all
    options = ChatOptions(system=system, colour_drafts=colour_drafts, thinking=thinking)
    session = ChatSession(bundle, settings, options, stream_fn=stream_fn, cache_factory=cache_factory, first=run.first)
    if stream_fn is None or run.size > 1:  # the real loop: this device's verdict, what it means for drafting
        from .. import probe

        for line in notes(probe.verdict(bundle), settings.draft, settings.exactness):
            console.print(line, style="yellow", highlight=False, markup=False)
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        run_interactive(session, console)
    else:
        # Bytes, so that a line that is not UTF-8 is refused alone instead of ending the session.
        run_piped(session, run.lines(getattr(stdin, "buffer", stdin)), stdout)
