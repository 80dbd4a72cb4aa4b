"""gemma_format: Gemma 4 output -> reasoning, content, tool calls, whatever the piece boundaries."""

import json

import pytest

from mlx_specdec.gemma_format import Content, GemmaParser, Reasoning, ToolCall, opens_reasoning, parse

# Gemma 4's real output formats (the thinking channel, tool calls with bare keys and <|"|> quotes).
THINKING = "<|channel>thought\nThe user wants a greeting.<channel|>Hello <b>there</b>!"
TOOL = 'Let me check.<|tool_call>call:get_weather{city:<|"|>Paris, FR<|"|>,days:3,metric:true}<tool_call|>'
TWO_TOOLS = (
    "<|channel>thought\nTwo lookups.<channel|>"
    '<|tool_call>call:search{query:<|"|>a{b}<|"|>,filters:{lang:<|"|>en<|"|>,n:2},tags:[<|"|>x<|"|>,1]}<tool_call|>'
    "<|tool_call>call:now{}<tool_call|>"
)
SAMPLES = [THINKING, TOOL, TWO_TOOLS, "plain < text <| with <|channel> no thought <tool_call|> stray"]


def joined(events):
    """Merge adjacent texts of one kind, so event lists from different splits compare equal."""
    out = []
    for e in events:
        if out and type(e) is type(out[-1]) and isinstance(e, (Content, Reasoning)):
            out[-1] = type(e)(out[-1].text + e.text)
        else:
            out.append(e)
    return out


def run(pieces, **kwargs):
    p = GemmaParser(**kwargs)
    events = [e for piece in pieces for e in p.feed(piece)]
    return joined(events + p.finish())


def test_thinking_channel_goes_to_reasoning_and_the_rest_to_content():
    assert run([THINKING]) == [Reasoning("The user wants a greeting."), Content("Hello <b>there</b>!")]


def test_tool_call_becomes_name_and_json_arguments():
    events = run([TOOL])
    assert events == [Content("Let me check."), ToolCall(0, "get_weather", events[1].arguments)]
    assert json.loads(events[1].arguments) == {"city": "Paris, FR", "days": 3, "metric": True}


def test_two_tool_calls_with_nested_arguments_are_indexed_in_order():
    events = run([TWO_TOOLS])
    assert [type(e) for e in events] == [Reasoning, ToolCall, ToolCall]
    assert (events[1].index, events[1].name, events[2].index, events[2].name) == (0, "search", 1, "now")
    assert json.loads(events[1].arguments) == {"query": "a{b}", "filters": {"lang": "en", "n": 2}, "tags": ["x", 1]}
    assert json.loads(events[2].arguments) == {}


@pytest.mark.parametrize("text", SAMPLES)
def test_every_split_into_two_pieces_gives_the_same_events(text):
    whole = run([text])
    for i in range(len(text) + 1):
        assert run([text[:i], text[i:]]) == whole, i


@pytest.mark.parametrize("text", SAMPLES)
def test_one_character_at_a_time_gives_the_same_events(text):
    assert run(list(text)) == run([text])


def test_token_pieces_from_the_real_detokenizer_give_the_same_events():
    from pathlib import Path

    from mlx_specdec.load import load_tokenizer

    tok = load_tokenizer(Path(__file__).parent / "fixtures" / "target_text")
    for text in SAMPLES:
        ids = tok.encode(text, add_special_tokens=False)
        detok = tok.detokenizer
        pieces = []
        for t in ids:
            detok.add_token(t)
            pieces.append(detok.last_segment)
        detok.finalize()
        pieces.append(detok.last_segment)
        assert "".join(pieces) == text
        assert run(pieces, think_start=tok.think_start, think_end=tok.think_end) == run([text])


def test_marker_prefix_is_held_back_until_it_is_decided():
    p = GemmaParser()
    assert p.feed("Hi <|chan") == [Content("Hi ")]
    assert p.feed("nel>tho") == []
    assert p.feed("ught\nok") == [Reasoning("ok")]
    assert p.feed(" <cha") == [Reasoning(" ")]
    assert p.feed("nnel|>done <") == [Content("done ")]
    assert p.finish() == [Content("<")]


def test_malformed_tool_call_is_returned_as_content_markers_included():
    bad = "<|tool_call>call:broken{city:<tool_call|>"
    assert run([bad]) == [Content(bad)]


def test_unclosed_tool_call_at_the_end_is_closed_as_written_else_content_without_markup():
    assert run(["<|tool_call>call:f{a:1}"])[0] == ToolCall(0, "f", '{"a": 1}')
    assert run(['<|tool_call>call:f{city:<|"|>Par']) == [ToolCall(0, "f", '{"city": "Par"}')]
    assert run(["<|tool_call>call:f{a:{b:1"]) == [ToolCall(0, "f", '{"a": {"b": 1}}')]
    # Cut mid-argument: the whole arguments before it, down to none; a cut name is text.
    assert run(["<|tool_call>call:f{a:"]) == [ToolCall(0, "f", "{}")]
    assert run(['<|tool_call>call:f{path:<|"|>a.py<|"|>,sta']) == [ToolCall(0, "f", '{"path": "a.py"}')]
    assert run(['<|tool_call>call:f{path:<|"|>a,b<|"|>,n:']) == [ToolCall(0, "f", '{"path": "a,b"}')]
    assert run(["<|tool_call>call:read_fi"]) == [Content("read_fi")]


def test_without_tools_the_markup_stays_content():
    assert run([TOOL], tools=False) == [Content(TOOL)]


def test_a_prompt_that_opens_the_channel_starts_the_output_in_reasoning():
    assert opens_reasoning("<|turn>model\n<|channel>thought\n")
    assert not opens_reasoning("<|turn>model\n<|channel>thought\n<channel|>")
    assert run(["still thinking<channel|>answer"], in_reasoning=True) == [
        Reasoning("still thinking"),
        Content("answer"),
    ]


def test_parse_collects_the_whole_output():
    out = parse(TWO_TOOLS)
    assert (
        out.reasoning == "Two lookups." and out.content == "" and [c.name for c in out.tool_calls] == ["search", "now"]
    )


def test_template_thinking_is_off_unless_asked_and_old_reasoning_is_dropped():
    from pathlib import Path

    from mlx_specdec.load import load_tokenizer
    from mlx_specdec.prompt import chat_ids

    tok = load_tokenizer(Path(__file__).parent / "fixtures" / "target_text")
    history = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": THINKING},
        {"role": "user", "content": "more"},
    ]
    off = tok.decode(chat_ids(tok, history))
    turns = "<|turn>user\nhi<turn|>\n<|turn>model\nHello <b>there</b>!<turn|>\n<|turn>user\nmore<turn|>\n"
    assert off == "<bos>" + turns + "<|turn>model\n"
    on = tok.decode(chat_ids(tok, history, enable_thinking=True))
    assert on == "<bos><|turn>system\n<|think|>\n<turn|>\n" + off[len("<bos>") :]
