"""`specdec chat`: a multi-turn chat on the speculative loop, live in a terminal or piped.

Roles:
- `ChatSession` holds the conversation, the settings and one `PromptCache` kept across turns:
  each turn renders the whole conversation with the tokenizer's chat template and the loop
  prefills only what follows the cached common prefix (`TokenRecord.prompt_tokens`).
  `reply()` is a generator; closing it (Ctrl-C) closes the loop's generator, whose `finally`
  rewinds the caches, and the partial answer stays in the conversation.
- `run_chat` picks the model (MODEL, --target/--drafter, --demo, or the cached Gemma 4 E2B
  bundle, converted on first use) and a front end: the Rich live view on a terminal, or one
  prompt per input line with a one-line stats summary when stdin is not a terminal.
This module reads memory counters from mlx for the view; `ui.py` never touches mlx.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, TextIO, Union

from .energy import EnergyMeter, battery, detect_energy_source
from .errors import SpecdecError
from .provision import (  # noqa: F401  (moved to provision; imported here for existing callers)
    DEFAULT_BUNDLE,
    DEFAULT_DRAFTER,
    DEFAULT_TARGET,
    cache_dir,
    default_bundle,
    hub_reachable,
)
from .settings import DraftSetting, GenerationSettings, draft_label, parse_draft
from .stats import RunStats, TokenRecord
from .ui import ChatView, Status, status_panel, summary_line

STATUS_INTERVAL_S = 0.25  # how often energy and memory are re-read while an answer streams

HELP = """\
/help            this help
/reset           forget the conversation (and the prompt cache)
/stats           the status panel of the last answer
/draft K|auto|off  draft length: K tokens per round, adaptive, or plain decoding
/temp T          sampling temperature (0 = greedy)
/colour          colour the tokens that came from the drafter (toggle)
/save FILE       write the conversation as JSON
/quit            leave (also Ctrl-D); Ctrl-C stops the current answer"""

@dataclass
class Settings:
    """What one turn is generated with; `/draft`, `/temp`, `/colour` change it."""

    max_tokens: int = 512
    draft: DraftSetting = "auto"
    temp: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: Optional[int] = None
    system: Optional[str] = None
    colour_drafts: bool = False
    battery: Optional[bool] = None  # auto draft length per joule (None: when on battery)
    max_context: Optional[int] = None

    def generation(self) -> GenerationSettings:
        from .sampling import SamplingParams

        sampling = SamplingParams(temp=self.temp, top_p=self.top_p, top_k=self.top_k, min_p=self.min_p, seed=self.seed)
        return GenerationSettings(
            max_tokens=self.max_tokens, draft=self.draft, sampling=sampling, max_context=self.max_context,
            battery=self.battery,
        )


@dataclass
class Turn:
    """The last answer: its prompt ids, records and status, for `/stats`."""

    records: list = field(default_factory=list)
    prompt: list = field(default_factory=list)
    status: Status = field(default_factory=Status)

    @property
    def prompt_len(self) -> Optional[int]:
        return len(self.prompt) if self.prompt else None


class ChatSession:
    """The conversation, its settings and the prompt cache kept between turns.

    `stream_fn` and `cache_factory` default to `decode.stream_generate` and `decode.PromptCache`;
    tests inject fakes with the same signatures.
    """

    def __init__(self, bundle, settings: Settings, *, stream_fn=None, cache_factory=None):
        if stream_fn is None or cache_factory is None:
            from . import decode

            from .cache import PromptCache

            stream_fn = stream_fn or decode.stream_generate
            cache_factory = cache_factory or PromptCache
        self.bundle = bundle
        self.settings = settings
        self._stream = stream_fn
        self._cache_factory = cache_factory
        self.messages: list[dict] = []
        self.prompt_cache = cache_factory(bundle)
        self.last = Turn()
        self.plain_speeds: list[float] = []  # decode tok/s of plain turns: the speed-up baseline
        if bundle.drafter is None:
            settings.draft = 0

    # -- the conversation --------------------------------------------------------------------
    def prompt_ids(self) -> list[int]:
        """The whole conversation through the chat template, ending with the model's turn."""
        from .prompt import chat_ids

        messages = list(self.messages)
        if self.settings.system:
            messages.insert(0, {"role": "system", "content": self.settings.system})
        return chat_ids(self.bundle.tokenizer, messages)

    def reply(self, text: str) -> Iterator[TokenRecord]:
        """Add the user's turn and return the answer's record stream. The answer joins the
        conversation even when the caller stops early (close() / Ctrl-C); `self.last` holds
        this turn's prompt length at once and its records as they come."""
        self.messages.append({"role": "user", "content": text})
        prompt = self.prompt_ids()
        self.last = Turn([], prompt)
        return self._stream_answer(prompt, self.last.records)

    def _stream_answer(self, prompt: list[int], records: list[TokenRecord]) -> Iterator[TokenRecord]:
        stream = self._stream(self.bundle, prompt, self.settings.generation(), prompt_cache=self.prompt_cache)
        try:
            for record in stream:
                records.append(record)
                yield record
        finally:
            stream.close()  # the loop rewinds its caches in its own finally
            self.messages.append({"role": "assistant", "content": self._answer_text(records)})
            stats = RunStats.from_records(records)
            if self.settings.draft == 0 and stats.decode_tokens_per_s > 0:
                self.plain_speeds.append(stats.decode_tokens_per_s)

    def _answer_text(self, records: list[TokenRecord]) -> str:
        eos = set(getattr(self.bundle.tokenizer, "eos_token_ids", ()) or ())
        if records and records[-1].finish_reason == "stop" and records[-1].token in eos:
            records = records[:-1]
        return "".join(r.text for r in records)

    @property
    def plain_tokens_per_s(self) -> Optional[float]:
        return statistics.median(self.plain_speeds) if self.plain_speeds else None

    def reset(self) -> None:
        self.messages.clear()
        self.prompt_cache = self._cache_factory(self.bundle)
        self.last = Turn()

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path).expanduser()
        data = {
            "model": self.bundle.name,
            "settings": asdict(self.settings),
            "messages": ([{"role": "system", "content": self.settings.system}] if self.settings.system else [])
            + self.messages,
        }
        try:
            path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        except OSError as e:
            raise SpecdecError(f"{path}: cannot write ({e.strerror})") from None
        return path

    # -- slash commands ----------------------------------------------------------------------
    def command(self, line: str) -> tuple[str, bool]:
        """Run one slash command -> (message for the user, quit?). Unknown commands explain."""
        name, _, arg = line.strip().partition(" ")
        name, arg = name.lower(), arg.strip()
        if name in ("/quit", "/exit", "/q"):
            return "bye", True
        if name in ("/help", "/?"):
            return HELP, False
        if name == "/reset":
            self.reset()
            return "conversation and prompt cache cleared", False
        if name == "/draft":
            if not arg:
                return f"draft length: {draft_label(self.settings.draft)} (use /draft K|auto|off)", False
            draft = parse_draft(arg)
            if draft != 0 and self.bundle.drafter is None:
                return "no drafter loaded: plain decoding only", False
            self.settings.draft = draft
            return f"draft length: {draft_label(draft)}", False
        if name == "/temp":
            from .sampling import SamplingParams

            try:
                temp = float(arg)
                SamplingParams(temp=temp)  # the one place sampling ranges are checked
            except (ValueError, SpecdecError):
                return f"/temp needs a finite number >= 0, not {arg!r}", False
            self.settings.temp = temp
            return f"temperature: {temp:g}", False
        if name in ("/colour", "/color"):
            self.settings.colour_drafts = not self.settings.colour_drafts
            return f"drafted tokens coloured: {'on' if self.settings.colour_drafts else 'off'}", False
        if name == "/save":
            if not arg:
                return "/save needs a file name", False
            return f"saved {len(self.messages)} messages to {self.save(arg)}", False
        if name == "/stats":
            return "", False  # the front end prints the panel
        return f"unknown command {name}; /help lists them", False


# ---------------------------------------------------------------------------------------------
# Machine readings for the status panel (mlx is only touched here, never in ui.py).


def memory() -> tuple[Optional[int], Optional[int]]:
    """(active, peak) bytes from mlx; (None, None) where the backend cannot tell."""
    try:
        import mlx.core as mx

        return int(mx.get_active_memory()), int(mx.get_peak_memory())
    except Exception:
        return None, None


def reset_peak_memory() -> None:
    try:
        import mlx.core as mx

        mx.reset_peak_memory()
    except Exception:
        pass


# ---------------------------------------------------------------------------------------------
# Front ends.


def _status(session: ChatSession, meter: Optional[EnergyMeter], batt) -> Status:
    active, peak = memory()
    return Status(
        draft=draft_label(session.settings.draft),
        plain_tokens_per_s=session.plain_tokens_per_s,
        active_memory_bytes=active,
        peak_memory_bytes=peak,
        energy_joules=meter.joules if meter else None,
        energy_watts=meter.watts if meter else None,
        energy_source=meter.source.name if meter else "n/a",
        battery=batt,
    )


def run_piped(session: ChatSession, lines: TextIO, out: TextIO, energy_source=None) -> None:
    """One prompt per line: print the answer as it streams, then one summary line."""
    source = energy_source or detect_energy_source()
    for line in lines:
        text = line.strip()
        if not text:
            continue
        if text.startswith("/"):
            try:
                message, quit_ = session.command(text)
            except SpecdecError as e:  # a bad argument: say so and read on, as on a terminal
                print(f"error: {e}", file=sys.stderr, flush=True)
                continue
            if text.split()[0].lower() == "/stats":
                message = summary_line(session.last.records, session.last.status, session.last.prompt_len)
            print(message, file=out, flush=True)
            if quit_:
                return
            continue
        reset_peak_memory()
        with EnergyMeter(source) as meter:
            for record in session.reply(text):
                out.write(record.text)
                out.flush()
        session.last.status = _status(session, meter, battery())
        out.write("\n")
        print(summary_line(session.last.records, session.last.status, session.last.prompt_len), file=out, flush=True)


def run_interactive(session: ChatSession, console, energy_source=None, read_line: Callable[[str], str] = input) -> None:
    """The live view: read a line, stream the answer above the status panel, repeat."""
    source = energy_source or detect_energy_source()
    _header(session, console, source)
    while True:
        try:
            console.print()
            text = read_line("› ").strip()
        except EOFError:
            console.print("bye", style="dim")
            return
        except KeyboardInterrupt:
            console.print("\n(/quit or Ctrl-D to leave)", style="dim")
            continue
        if not text:
            continue
        if text.startswith("/"):
            try:
                message, quit_ = session.command(text)
            except SpecdecError as e:
                console.print(f"error: {e}", style="red", highlight=False)
                continue
            if text.split()[0].lower() == "/stats":
                last = session.last
                console.print(status_panel(last.records, last.status, last.prompt_len))
            else:
                console.print(message, style="dim", highlight=False, markup=False)
            if quit_:
                return
            continue
        _answer(session, console, text, source)


def _answer(session: ChatSession, console, text: str, source) -> None:
    reset_peak_memory()
    batt = battery()
    meter = EnergyMeter(source).start()
    reply = session.reply(text)
    view = ChatView(
        console,
        status=_status(session, meter, batt),
        colour_drafts=session.settings.colour_drafts,
        prompt_len=session.last.prompt_len,
    )
    interrupted = False
    try:
        with _no_echo(), view:
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
        console.print(f"error: {e}", style="red", highlight=False)
    finally:
        reply.close()
        meter.stop()
    session.last.status = view.status
    if interrupted:
        console.print("(stopped; the chat goes on)", style="yellow")


@contextlib.contextmanager
def _no_echo():
    """Keystrokes typed while an answer streams (Ctrl-C's "^C" included) must not land inside
    the live region: turn off terminal echo until it is gone. Typeahead stays queued."""
    try:
        import termios

        fd = sys.stdin.fileno()
        saved = termios.tcgetattr(fd)
    except Exception:  # not a POSIX terminal: nothing to silence
        saved = None
    if saved is not None:
        quiet = list(saved)
        quiet[3] &= ~(termios.ECHO | getattr(termios, "ECHOCTL", 0))
        termios.tcsetattr(fd, termios.TCSANOW, quiet)
    try:
        yield
    finally:
        if saved is not None:
            termios.tcsetattr(fd, termios.TCSANOW, saved)


def _header(session: ChatSession, console, source) -> None:
    from rich.panel import Panel

    b = session.bundle
    rows = [
        ("model", b.name),
        ("drafter", "yes" if b.drafter is not None else "none (plain decoding)"),
        ("draft length", draft_label(session.settings.draft)),
        ("sampling", f"temp {session.settings.temp:g}" + (f", seed {session.settings.seed}" if session.settings.seed is not None else "")),
        ("energy", source.name),
    ]
    body = "\n".join(f"[dim]{k:<13}[/dim]{v}" for k, v in rows)
    console.print(Panel(body, title="specdec chat", title_align="left", border_style="blue", expand=False))
    console.print("/help for commands, Ctrl-C stops an answer, Ctrl-D leaves", style="dim")


def run_chat(
    model: Optional[str] = None,
    *,
    target: Optional[str] = None,
    drafter: Optional[str] = None,
    demo: bool = False,
    settings: GenerationSettings = GenerationSettings(max_tokens=512),
    system: Optional[str] = None,
    colour_drafts: bool = False,
    stdin: Optional[TextIO] = None,
    stdout: Optional[TextIO] = None,
    load_fn=None,
    stream_fn=None,
    cache_factory=None,
) -> None:
    """Chat with a model: live on a terminal, one prompt per line otherwise. Raises SpecdecError."""
    from rich.console import Console

    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    interactive = stdin.isatty() and stdout.isatty()
    console = Console(file=stdout, highlight=False) if interactive else Console(file=sys.stderr, highlight=False)
    sp = settings.sampling
    settings = Settings(
        max_tokens=settings.max_tokens, draft=settings.draft, temp=sp.temp, top_p=sp.top_p, top_k=sp.top_k,
        min_p=sp.min_p, seed=sp.seed, system=system, colour_drafts=colour_drafts, battery=settings.battery,
        max_context=settings.max_context,
    )
    if load_fn is None:
        from .load import load as load_fn
    if model is None and target is None and not demo:
        model = str(default_bundle(console=console))
    if interactive:
        with console.status("loading the model ..."):
            bundle = load_fn(model, target=target, drafter=drafter, demo=demo)
    else:
        bundle = load_fn(model, target=target, drafter=drafter, demo=demo)
    session = ChatSession(bundle, settings, stream_fn=stream_fn, cache_factory=cache_factory)
    if interactive:
        try:
            import readline  # noqa: F401  (line editing and history for input())
        except ImportError:
            pass
        run_interactive(session, console)
    else:
        run_piped(session, stdin, stdout)
