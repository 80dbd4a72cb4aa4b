"""The chat view rendered to a recording Console: what the user reads, n/a where nothing is known."""

import io
import time
from dataclasses import replace

from rich.console import Console
from rich.text import Text

from mlx_specdec.chat.view import DRAFT_STYLE, ChatView, Status, histogram, status_panel, summary_line
from mlx_specdec.energy import Battery
from mlx_specdec.stats import RunStats, TokenRecord


def records(pieces, k=4, accepted=(3, 0, 2), prompt_tokens=12):
    """Round 0 is the prefill's token; then rounds of accepted drafts plus one bonus token."""
    out, i, t = [], 0, 0.0

    def rec(from_draft, rnd, a):
        nonlocal i, t
        r = TokenRecord(
            token=i,
            text=pieces[i % len(pieces)],
            from_draft=from_draft,
            round=rnd,
            draft_tokens=k if rnd else 0,
            accepted=a,
            prompt_tokens=prompt_tokens,
            ttft_s=0.25,
            elapsed_s=t,
        )
        i, t = i + 1, t + 0.1
        return r

    out.append(rec(False, 0, 0))
    for rnd, a in enumerate(accepted, start=1):
        out += [rec(True, rnd, a) for _ in range(a)] + [rec(False, rnd, a)]
    return out


def render(renderable, width=100):
    console = Console(record=True, width=width, file=io.StringIO())
    console.print(renderable)
    return console.export_text()


FULL = Status(
    draft="auto",
    plain_tokens_per_s=4.5,
    active_memory_bytes=1_250_000_000,
    peak_memory_bytes=2_500_000_000,
    energy_joules=2.4,
    energy_watts=6.0,
    energy_source="IOReport",
    battery=Battery(81.0, True),
)


def test_panel_shows_every_metric_when_known():
    recs = records(["a", "b"])  # 9 tokens, rounds accepting 3, 0, 2 of k=4
    text = render(status_panel(recs, FULL, prompt_len=40))
    assert "10.0 tok/s" in text  # 8 decode tokens over 0.8 s
    assert "250 ms" in text
    assert "12 new tokens (28 reused from cache)" in text
    assert "9 (5 from the drafter)" in text
    assert "auto (now 4)" in text
    assert "1.67 of 4 (42%)" in text
    assert "2.22x vs plain" in text
    assert "1.25 GB active, 2.50 GB peak" in text
    assert "0.267 J/token, 6.0 W (IOReport)" in text
    assert "81% on battery" in text


def test_panel_says_na_where_no_source_exists():
    text = render(status_panel(records(["a"]), Status()))
    for label in ("speed-up", "memory", "energy", "battery"):
        line = next(row for row in text.splitlines() if label in row)
        assert "n/a" in line, line


def test_histogram_has_one_bar_per_accepted_count_scaled_to_the_largest():
    recs = records(["x"], k=3, accepted=(3, 3, 1, 0))
    rows = histogram(RunStats.from_records(recs), k=3, width=12).plain.splitlines()
    assert [r.split()[0] for r in rows] == ["0", "1", "2", "3"]
    assert [r.count("█") for r in rows] == [6, 6, 0, 12]
    assert [r.split()[-1] for r in rows] == ["1", "1", "0", "2"]
    assert "accepted drafts per round" in render(status_panel(recs, Status()))


def test_plain_decoding_shows_no_histogram_and_draft_off():
    recs = [TokenRecord(i, "t", False, i, 0, 0, 5, 0.1, 0.1 * i) for i in range(5)]
    text = render(status_panel(recs, Status(draft="off")))
    assert "accepted drafts per round" not in text
    assert "off" in next(row for row in text.splitlines() if "draft length" in row)
    assert "n/a" in next(row for row in text.splitlines() if "accepted/round" in row)
    assert "baseline (plain decoding)" in next(row for row in text.splitlines() if "speed-up" in row)


def test_summary_line_is_one_line_with_the_key_numbers():
    line = summary_line(records(["a"]), FULL, prompt_len=40)
    assert "\n" not in line
    for part in (
        "9 tokens",
        "10.0 tok/s",
        "TTFT 250 ms",
        "prefill 12 (+28 cached)",
        "draft auto (now 4)",
        "1.67 accepted/round",
        "speed-up 2.22x",
        "0.267 J/token",
    ):
        assert part in line, (part, line)
    assert "energy n/a" in summary_line(records(["a"]), Status())


def test_energy_says_measuring_during_the_first_counter_period_not_zero_watts():
    measuring = replace(FULL, energy_joules=0.0, energy_watts=None, energy_measuring=True)
    panel = render(status_panel(records(["a"]), measuring))
    assert "measuring (IOReport)" in next(row for row in panel.splitlines() if "energy" in row)
    assert "J/token" not in panel
    line = summary_line(records(["a"]), measuring)
    assert "energy n/a (under one counter period)" in line and "J/token" not in line


def test_exit_prints_the_whole_answer_as_markdown_then_the_summary():
    console = Console(record=True, width=80, file=io.StringIO())
    with ChatView(console, status=FULL) as view:
        for r in records(["**bold** ", "word "]):
            view.add(r)
    text = console.export_text()
    assert "bold word bold word" in text  # Markdown: the asterisks are gone
    assert "**" not in text
    assert text.rstrip().splitlines()[-1].startswith("9 tokens")


def test_colour_toggle_styles_exactly_the_drafted_tokens():
    view = ChatView(Console(file=io.StringIO()), colour_drafts=True)
    recs = records(["ab", "cd"])
    for r in recs:
        view.add(r)
    answer = view.answer()
    assert isinstance(answer, Text)
    styled = "".join(answer.plain[s.start : s.end] for s in answer.spans if s.style == DRAFT_STYLE)
    assert styled == "".join(r.text for r in recs if r.from_draft)
    # The rendered terminal output carries the colour.
    console = Console(file=io.StringIO(), force_terminal=True, color_system="standard", width=80)
    console.print(answer)
    assert "\x1b[1;36m" in console.file.getvalue()


def test_live_view_shows_the_newest_lines_above_the_panel():
    console = Console(record=True, width=60, height=20, file=io.StringIO())
    view = ChatView(console, status=FULL)
    for i in range(40):
        view.add(TokenRecord(i, f"line {i}\n\n", False, i, 0, 0, 3, 0.1, 0.1 * i))
    console.print(view._live_renderable())
    text = console.export_text()
    assert "line 39" in text and "line 0\n" not in text
    assert len(text.splitlines()) <= 20
    assert "specdec" in text and "decode" in text


def test_refresh_is_capped_however_fast_tokens_arrive():
    console = Console(width=60, height=20, file=io.StringIO(), force_terminal=True)
    view = ChatView(console, refresh_per_second=8)
    renders = 0
    real = view._live_renderable

    def counting():
        nonlocal renders
        renders += 1
        return real()

    view._live.get_renderable = counting
    with view:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.5:
            view.add(TokenRecord(0, "x", False, 1, 0, 0, 1, 0.0, 0.0))
    # ~4 refreshes in 0.5 s at 8/s, plus the start and stop renders.
    assert len(view.records) > 1000
    assert renders <= 10


def thought_records(text):
    return [
        TokenRecord(
            token=i,
            text=ch,
            from_draft=False,
            round=i,
            draft_tokens=0,
            accepted=0,
            prompt_tokens=3,
            ttft_s=0.1,
            elapsed_s=0.01 * i,
        )
        for i, ch in enumerate(text)
    ]


def test_thinking_shows_dimmed_while_it_streams_then_collapses_and_markup_never_shows():
    view = ChatView(Console(record=True, width=80, file=io.StringIO()))
    for r in thought_records("<|channel>thought\nweighing the options<channel|>"):
        view.add(r)
    live = render(view.answer(live=True))
    assert "thinking ..." in live and "weighing the options" in live and "<|channel>" not in live
    for r in thought_records('**Use a list.** <|tool_call>call:search{q:<|"|>lists<|"|>}<tool_call|>'):
        view.add(r)
    view.parsed.finish()
    done = render(view.answer(live=False))
    assert "▸ thought for 3 words (/think shows it)" in done
    assert "weighing" not in done and "<|" not in done and "|>" not in done
    assert "Use a list." in done and '[tool call] search({"q": "lists"})' in done
