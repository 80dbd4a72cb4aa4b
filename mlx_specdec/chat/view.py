"""The Rich live view of `specdec chat`: the answer streaming as Markdown above a status panel.

`ChatView` is a context manager around one answer. It never calls mlx: it reads the loop's
`TokenRecord`s (`add`) and a `Status` of the numbers only the caller knows (memory, energy,
battery, the plain-decoding baseline, the context). Rendering happens on Rich's refresh thread, at
most `refresh_per_second` times a second, however fast tokens arrive; `add` only appends.

While live, the answer is cut to the lines that fit above the panel (the newest ones); on exit
the live region disappears and the whole answer is printed once, then a one-line summary.
With `colour_drafts` the answer is shown as plain text with the drafter's accepted tokens in
colour (Markdown cannot colour single tokens).

The text goes through `gemma_format.GemmaParser`, so Gemma 4's markup never shows: thinking is
shown dimmed while it streams and collapses to one line once the answer starts (`/think` in the
chat shows it whole), and a tool call shows as one dim line.
"""

from __future__ import annotations

import threading
from typing import Optional

from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.markdown import Markdown
from rich.panel import Panel
from rich.segment import Segment
from rich.table import Table
from rich.text import Text

from ..gemma_format import Content, Event, GemmaParser, Reasoning
from ..stats import RunStats, TokenRecord
from .session import NA, Status

DRAFT_STYLE = "bold cyan"
THINK_STYLE = "dim italic"


def visible_text(event: Event) -> str:
    """What the user reads of one parsed event: content as it is, a tool call as one line,
    thinking not at all (it is shown apart, dimmed)."""
    if isinstance(event, Content):
        return event.text
    if isinstance(event, Reasoning):
        return ""
    return f"\n[tool call] {event.name}({event.arguments})\n"


class ParsedAnswer:
    """An answer split by the Gemma 4 parser as its records arrive: the thinking, and the
    visible pieces, each with whether its token came from the drafter."""

    def __init__(self):
        self.parser = GemmaParser()
        self.reasoning = ""
        self.pieces: list[tuple[str, bool]] = []

    def add(self, record: TokenRecord) -> None:
        self._take(self.parser.feed(record.text), record.from_draft)

    def finish(self) -> None:
        self._take(self.parser.finish(), False)

    def _take(self, events: list[Event], from_draft: bool) -> None:
        for e in events:
            if isinstance(e, Reasoning):
                self.reasoning += e.text
            elif text := visible_text(e):
                self.pieces.append((text, from_draft and isinstance(e, Content)))

    @property
    def text(self) -> str:
        return "".join(t for t, _ in self.pieces)

    def thinking(self, live: bool, lines: int = 6) -> Optional[Text]:
        """While only thinking has come: its last lines, dimmed; after that: one collapsed line."""
        if not self.reasoning.strip():
            return None
        if live and not self.text.strip():
            tail = "\n".join(self.reasoning.strip().splitlines()[-lines:])
            return Text(f"thinking ...\n{tail}", style=THINK_STYLE)
        words = len(self.reasoning.split())
        return Text(f"▸ thought for {words} words (/think shows it)", style=THINK_STYLE)


# ---------------------------------------------------------------------------------------------
# Formatting: pure functions of RunStats + Status, shared by the panel and the summary line.


def _bytes(n: Optional[int]) -> str:
    if n is None:
        return NA
    return f"{n / 1e9:.2f} GB" if n >= 1e9 else f"{n / 1e6:.0f} MB"


def fmt_speed(stats: RunStats) -> str:
    return f"{stats.decode_tokens_per_s:.1f} tok/s" if stats.decode_tokens_per_s > 0 else NA


def fmt_ttft(stats: RunStats) -> str:
    return f"{stats.ttft_s * 1e3:.0f} ms" if stats.generated_tokens else NA


def fmt_speedup(stats: RunStats, status: Status) -> str:
    if status.draft == "off":
        return "baseline (plain decoding)"
    if not status.plain_tokens_per_s or stats.decode_tokens_per_s <= 0:
        return NA
    return f"{stats.decode_tokens_per_s / status.plain_tokens_per_s:.2f}x vs plain"


def fmt_accepted(stats: RunStats, k: int) -> str:
    if not stats.rounds:
        return NA
    return f"{stats.mean_accepted_per_round:.2f} of {k} ({stats.acceptance_rate:.0%})"


def fmt_draft(status: Status, records: list[TokenRecord]) -> str:
    """The setting, and for "auto" the length the latest round used."""
    if status.draft == "auto" and records:
        return f"auto (now {records[-1].draft_tokens})"
    return status.draft


def fmt_energy(stats: RunStats, status: Status) -> str:
    if status.energy_measuring:  # joules so far would read 0 or a whole batch
        return f"measuring ({status.energy_source})"
    if status.energy_joules is None or not stats.generated_tokens:
        return NA
    text = f"{status.energy_joules / stats.generated_tokens:.3f} J/token"
    if status.energy_watts is not None:
        text += f", {status.energy_watts:.1f} W"
    return f"{text} ({status.energy_source})"


def fmt_memory(status: Status) -> str:
    if status.active_memory_bytes is None and status.peak_memory_bytes is None:
        return NA
    return f"{_bytes(status.active_memory_bytes)} active, {_bytes(status.peak_memory_bytes)} peak"


def fmt_battery(status: Status) -> str:
    b = status.battery
    if b is None:
        return NA
    source = {True: "on battery", False: "on mains", None: "power source unknown"}[b.on_battery]
    return f"{b.percent:.0f}% {source}"


def fmt_prefill(stats: RunStats, prompt_len: Optional[int]) -> str:
    if not stats.generated_tokens:
        return NA
    text = f"{stats.prompt_tokens} new tokens"
    if prompt_len is not None and prompt_len > stats.prompt_tokens:
        text += f" ({prompt_len - stats.prompt_tokens} reused from cache)"
    return text


def fmt_context(records: list[TokenRecord], status: Status, prompt_len: Optional[int]) -> str:
    """Tokens in the context after this answer, of how many, and what was dropped to fit."""
    if status.context_limit is None or prompt_len is None:
        text = NA
    else:
        text = f"{prompt_len + len(records)} of {status.context_limit} tokens"
    if status.dropped_messages:
        text += f", {status.dropped_messages} oldest messages dropped"
    return text


def histogram(stats: RunStats, k: int, width: int = 12) -> Text:
    """Accepted drafts per round: one bar per count 0..k."""
    text = Text()
    counts = stats.accepted_histogram
    top = max(counts.values(), default=0)
    for a in range(k + 1):
        n = counts.get(a, 0)
        bar = "█" * (round(width * n / top) if top else 0)
        text.append(f"{a:>2} ", style="dim")
        text.append(f"{bar:<{width}}", style="green")
        text.append(f" {n}\n" if a < k else f" {n}")
    return text


def summary_line(records: list[TokenRecord], status: Status, prompt_len: Optional[int] = None) -> str:
    """One line for piped mode and under each answer."""
    stats = RunStats.from_records(records)
    cached = prompt_len - stats.prompt_tokens if prompt_len and stats.generated_tokens else 0
    parts = [
        f"{stats.generated_tokens} tokens",
        fmt_speed(stats),
        f"TTFT {fmt_ttft(stats)}",
        f"prefill {stats.prompt_tokens}" + (f" (+{cached} cached)" if cached > 0 else ""),
        f"draft {fmt_draft(status, records)}",
    ]
    if stats.rounds:
        parts.append(f"{stats.mean_accepted_per_round:.2f} accepted/round")
    speedup = fmt_speedup(stats, status)
    parts.append(f"speed-up {speedup.replace(' vs plain', '').replace(' (plain decoding)', '')}")
    if status.energy_measuring:
        parts.append(f"energy {NA} (under one counter period)")
    elif status.energy_joules is not None and stats.generated_tokens:
        parts.append(f"{status.energy_joules / stats.generated_tokens:.3f} J/token")
    else:
        parts.append(f"energy {NA}")
    if status.dropped_messages:
        parts.append(f"{status.dropped_messages} oldest messages dropped to fit the context")
    return " · ".join(parts)


def _draft_k(records: list[TokenRecord]) -> int:
    """The largest draft length used in these records (0: plain decoding)."""
    return max((r.draft_tokens for r in records), default=0)


def status_panel(records: list[TokenRecord], status: Status, prompt_len: Optional[int] = None) -> Panel:
    """The status panel for one answer's records (also what `/stats` prints)."""
    stats, k = RunStats.from_records(records), _draft_k(records)
    drafted = sum(r.from_draft for r in records)
    rows = [
        ("decode", fmt_speed(stats)),
        ("TTFT", fmt_ttft(stats)),
        ("prefill", fmt_prefill(stats, prompt_len)),
        ("tokens", f"{stats.generated_tokens} ({drafted} from the drafter)" if records else NA),
        ("draft length", fmt_draft(status, records)),
        ("accepted/round", fmt_accepted(stats, k)),
        ("speed-up", fmt_speedup(stats, status)),
        ("memory", fmt_memory(status)),
        ("energy", fmt_energy(stats, status)),
        ("battery", fmt_battery(status)),
        ("context", fmt_context(records, status, prompt_len)),
    ]
    left = Table.grid(padding=(0, 1))
    left.add_column(style="dim", no_wrap=True)
    left.add_column(no_wrap=True)
    for label, value in rows:
        left.add_row(label, value)
    grid = Table.grid(padding=(0, 3))
    grid.add_column()
    grid.add_column()
    if k:
        right = Group(Text("accepted drafts per round", style="dim"), histogram(stats, k))
        grid.add_row(left, right)
    else:
        grid.add_row(left)
    return Panel(grid, title="specdec", title_align="left", border_style="blue", expand=True)


class _Tail:
    """Renders only the last lines of a renderable that fit `height` (the newest text)."""

    def __init__(self, renderable, height: int):
        self.renderable, self.height = renderable, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = console.render_lines(self.renderable, options.update(height=None), pad=False)
        if self.height <= 0:
            return
        for line in lines[-self.height :]:
            yield from line
            yield Segment.line()


class ChatView:
    """Live view of one answer: `with ChatView(console) as view: view.add(record) ...`."""

    def __init__(
        self,
        console: Console | None = None,
        *,
        status: Status = Status(),
        colour_drafts: bool = False,
        prompt_len: Optional[int] = None,
        refresh_per_second: float = 8.0,
    ):
        self.console = console or Console()
        self.status = status
        self.colour_drafts = colour_drafts
        self.prompt_len = prompt_len
        self.records: list[TokenRecord] = []
        self.parsed = ParsedAnswer()
        self._lock = threading.Lock()  # add() runs on the caller's thread, rendering on Rich's
        self._live = Live(
            console=self.console,
            get_renderable=self._live_renderable,
            refresh_per_second=refresh_per_second,
            transient=True,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    # -- feeding -------------------------------------------------------------------------------
    def add(self, record: TokenRecord) -> None:
        with self._lock:
            self.records.append(record)
            self.parsed.add(record)

    # -- rendering -----------------------------------------------------------------------------
    def answer(self, live: bool = True):
        """The thinking (dimmed, or collapsed to one line) above the answer."""
        with self._lock:
            pieces, thinking = list(self.parsed.pieces), self.parsed.thinking(live)
        if not self.colour_drafts:
            body = Markdown("".join(t for t, _ in pieces))
        else:
            body = Text()
            for t, from_draft in pieces:
                body.append(t, style=DRAFT_STYLE if from_draft else None)
        return body if thinking is None else Group(thinking, body)

    def panel(self) -> Panel:
        with self._lock:
            records, status = list(self.records), self.status
        return status_panel(records, status, self.prompt_len)

    def summary(self) -> str:
        with self._lock:
            records, status = list(self.records), self.status
        return summary_line(records, status, self.prompt_len)

    def _live_renderable(self):
        panel = self.panel()
        panel_height = len(self.console.render_lines(panel, self.console.options, pad=False))
        room = self.console.size.height - panel_height - 1
        return Group(_Tail(self.answer(), room), panel)

    # -- lifetime ------------------------------------------------------------------------------
    def __enter__(self) -> ChatView:
        self._live.start()
        return self

    def __exit__(self, *exc) -> None:
        self._live.stop()  # transient: the live region is erased ...
        with self._lock:
            self.parsed.finish()
        self.console.print(self.answer(live=False))  # ... and the whole answer printed once
        self.console.print(self.summary(), style="dim", highlight=False, soft_wrap=True)
