"""Gemma 4's output format, parsed incrementally into reasoning, content and tool calls.

The one place that reads Gemma 4's output markup; shared by `specdec serve` and `specdec chat`.
Gemma 4 writes (its chat template, DESIGN.md):

    <|channel>thought\\n ... <channel|>                   the thinking channel -> Reasoning
    <|tool_call>call:NAME{key:<|"|>text<|"|>,n:3}<tool_call|>   a tool call -> ToolCall
    anything else                                        the answer -> Content

The markers come from mlx-lm: the thinking markers from its tokenizer wrapper
(`think_start` / `think_end`, detected from the vocabulary) and the tool-call markers and the
argument parser from `mlx_lm.tool_parsers.gemma4`. This module adds only the streaming side.

Invariants:
* `feed()` never emits text that a later piece could turn into a marker: it holds back the
  longest tail that is a proper prefix of a marker allowed in the current state, and buffers a
  tool call until it closes. So every split of the same text (at any character, hence any
  token boundary) yields the same events once adjacent texts of one kind are joined, and
  `parse(text)` equals feeding it in pieces.
* A tool call whose arguments do not parse is given back as Content, markers included:
  nothing the model wrote is lost.

API for front ends (the chat UI shows Reasoning dimmed, the server maps events to deltas):

    parser = GemmaParser.for_tokenizer(bundle.tokenizer)     # or GemmaParser()
    for record in stream_generate(...):
        for event in parser.feed(record.text):
            match event:
                case Reasoning(text): ...    # thinking: show dimmed / collapsible
                case Content(text): ...      # the answer
                case ToolCall(index, name, arguments): ...   # arguments: a JSON object text
    for event in parser.finish(): ...        # the held-back tail, at the end of generation

`tool_call_grammar` writes the same syntax the other way round: a Lark grammar (for grammar.py)
whose calls follow the tools' JSON Schemas (OpenAI's strict tool parameters).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from mlx_lm.tool_parsers import gemma4

THINK_START = "<|channel>thought"  # what mlx-lm's tokenizer wrapper detects for Gemma 4
THINK_END = "<channel|>"
STRING_DELIM = '<|"|>'  # Gemma 4 quotes string arguments with it
TOOL_START, TOOL_END = gemma4.tool_call_start, gemma4.tool_call_end  # "<|tool_call>", "<tool_call|>"


@dataclass(frozen=True)
class Content:
    """Answer text."""

    text: str


@dataclass(frozen=True)
class Reasoning:
    """Text of the thinking channel (without its markers and the newline after `thought`)."""

    text: str


@dataclass(frozen=True)
class ToolCall:
    """One complete tool call: `index` counts calls from 0; `arguments` is a JSON object text."""

    index: int
    name: str
    arguments: str


Event = Content | Reasoning | ToolCall

_CONTENT, _REASONING, _TOOL = "content", "reasoning", "tool"


@dataclass
class Parsed:
    """A whole output, split: what `parse` returns and `GemmaParser.result` accumulates."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)

    def add(self, events: list[Event]) -> None:
        for e in events:
            if isinstance(e, Content):
                self.content += e.text
            elif isinstance(e, Reasoning):
                self.reasoning += e.text
            else:
                self.tool_calls.append(e)


def _held_back(buf: str, markers: list[str]) -> int:
    """Length of the longest tail of `buf` that is a proper prefix of one of `markers`."""
    for n in range(min(len(buf), max(len(m) for m in markers) - 1), 0, -1):
        if any(m.startswith(buf[-n:]) for m in markers):
            return n
    return 0


def parse_tool_call(body: str, first_index: int) -> list[ToolCall]:
    """`call:NAME{...}` (the text between the markers) -> ToolCalls; raises ValueError if malformed."""
    try:
        parsed = gemma4.parse_tool_call(body)
    except Exception as e:  # the regex finds nothing, or the arguments are not valid once converted
        raise ValueError(f"not a Gemma 4 tool call: {body!r}") from e
    calls = parsed if isinstance(parsed, list) else [parsed]
    return [
        ToolCall(first_index + i, c["name"], json.dumps(c["arguments"], ensure_ascii=False))
        for i, c in enumerate(calls)
    ]


class GemmaParser:
    """Incremental parser: `feed(piece)` -> events, `finish()` -> the rest; see the module docstring.

    tools: recognise tool calls (False: tool-call markup stays Content, as for `tool_choice: none`).
    in_reasoning: start inside the thinking channel (the prompt opened it; see `opens_reasoning`).
    """

    def __init__(
        self,
        *,
        tools: bool = True,
        in_reasoning: bool = False,
        think_start: str = THINK_START,
        think_end: str = THINK_END,
    ):
        self.tools = tools
        self.think_start, self.think_end = think_start, think_end
        self._state = _REASONING if in_reasoning else _CONTENT
        self._strip_newline = in_reasoning
        self._buf = ""
        self._calls = 0
        self.result = Parsed()

    @classmethod
    def for_tokenizer(cls, tokenizer, **kwargs) -> GemmaParser:
        """Thinking markers as mlx-lm's TokenizerWrapper detected them (Gemma 4's by default)."""
        if getattr(tokenizer, "has_thinking", False) and tokenizer.think_start:
            kwargs.setdefault("think_start", tokenizer.think_start)
            kwargs.setdefault("think_end", tokenizer.think_end)
        return cls(**kwargs)

    def feed(self, text: str) -> list[Event]:
        """Add a piece of output text; returns the events it completes (possibly none)."""
        self._buf += text
        events: list[Event] = []
        while self._step(events):
            pass
        self.result.add(events)
        return events

    def finish(self) -> list[Event]:
        """End of output: emit what was held back (an unclosed tool call as Content, or parsed if whole)."""
        events: list[Event] = []
        buf, self._buf = self._buf, ""
        if self._state == _TOOL:
            events.extend(self._tool_events(buf, closed=False))
        elif buf:
            events.append(Reasoning(buf) if self._state == _REASONING else Content(buf))
        self._state = _CONTENT
        self.result.add(events)
        return events

    # -- the state machine ---------------------------------------------------------------
    def _step(self, events: list[Event]) -> bool:
        """Consume what the buffer allows in the current state; True when the state changed."""
        buf = self._buf
        if self._state == _TOOL:
            end = buf.find(TOOL_END)
            if end < 0:
                return False  # a tool call is emitted whole, once it closes
            self._buf, self._state = buf[end + len(TOOL_END) :], _CONTENT
            events.extend(self._tool_events(buf[:end], closed=True))
            return True
        if self._state == _REASONING:
            if self._strip_newline and buf:
                buf, self._strip_newline = buf[1:] if buf[0] == "\n" else buf, False
            markers = [self.think_end]
        else:
            markers = [self.think_start] + ([TOOL_START] if self.tools else [])
        hits = [(i, m) for m in markers if (i := buf.find(m)) >= 0]
        if hits:
            i, marker = min(hits)
            self._emit(events, buf[:i])
            self._buf = buf[i + len(marker) :]
            if marker == self.think_start:
                self._state, self._strip_newline = _REASONING, True
            else:
                self._state = _TOOL if marker == TOOL_START else _CONTENT
            return True
        keep = _held_back(buf, markers)
        self._emit(events, buf[: len(buf) - keep])
        self._buf = buf[len(buf) - keep :]
        return False

    def _emit(self, events: list[Event], text: str) -> None:
        if text:
            events.append(Reasoning(text) if self._state == _REASONING else Content(text))

    def _tool_events(self, body: str, closed: bool) -> list[Event]:
        # An unclosed call (the output hit its token limit) is closed as written so far: the
        # string and the braces it left open; failing that, cut back to its last whole argument
        # (down to no arguments) and closed there. A call whose name was cut comes back as its
        # text without the call syntax, so a client never sees half a call.
        if closed:
            try:
                calls = parse_tool_call(body, self._calls)
            except ValueError:
                return [Content(TOOL_START + body + TOOL_END)]
            self._calls += len(calls)
            return list(calls)
        for head in _cut_backs(body):
            for ending in ("", "}", STRING_DELIM + "}", "}}", STRING_DELIM + "}}", "]}", STRING_DELIM + "]}"):
                try:
                    calls = parse_tool_call(head + ending, self._calls)
                except ValueError:
                    continue
                self._calls += len(calls)
                return list(calls)
        text = body.removeprefix("call:").replace(STRING_DELIM, '"')
        return [Content(text)] if text else []


def _cut_backs(body: str) -> list[str]:
    """An unclosed call's text, then that text cut back to each boundary between arguments outside
    strings (after a `{`, before a `,`), the latest first."""
    cuts, in_string, i = [], False, 0
    while i < len(body):
        if body.startswith(STRING_DELIM, i):
            in_string, i = not in_string, i + len(STRING_DELIM)
            continue
        if not in_string and body[i] in "{,":
            cuts.append(body[: i + 1] if body[i] == "{" else body[:i])
        i += 1
    return [body, *reversed(cuts)]


def opens_reasoning(prompt_text: str, think_start: str = THINK_START, think_end: str = THINK_END) -> bool:
    """True when the prompt ends inside an open thinking channel (the generation starts in it)."""
    start = prompt_text.rfind(think_start)
    return start >= 0 and prompt_text.find(think_end, start) < 0


def parse(text: str, **kwargs) -> Parsed:
    """A whole output at once (the same result as feeding it in any pieces)."""
    parser = GemmaParser(**kwargs)
    parser.feed(text)
    parser.finish()
    return parser.result


# --- strict tool parameters: calls as a grammar ---------------------------------------------------
# OpenAI's `strict: true` promises arguments that validate against the tool's `parameters`. The
# call is written in Gemma 4's own syntax (what the template shows the model), so the grammar is
# that syntax, built from the schema: keys bare and in the template's (sorted) order, strings
# between STRING_DELIM, numbers, true/false/null, [..] and {..}; no whitespace. What the grammar
# allows, `parse_tool_call` turns into JSON that validates. Keywords it cannot enforce (pattern,
# minimum, ...) are refused, never ignored. A forced call's grammar starts after its prefilled
# start; with tool_choice auto the grammar is free text in which each call is constrained.
_ANNOTATIONS = {"description", "title", "default", "examples", "$schema", "$comment"}
_KEYWORDS = {
    None: {"type", "enum", "const", "anyOf"},
    "object": {"properties", "required", "additionalProperties"},
    "array": {"items"},
    "string": {"minLength", "maxLength"},
}
_KEY = r"[\w.$@-]+"  # keys the parser reads back (no ',', ':', '{' or quotes inside)


@dataclass(frozen=True)
class Markup:
    """How a tokenizer writes the markup, for a grammar: the markers it writes as one token
    (Gemma 4's are special tokens; a test tokenizer may spell them out) -> the id, and its special
    tokens' ids (free text may contain them, but no text lexeme matches them)."""

    one_token: dict = field(default_factory=dict)
    special_ids: tuple[int, ...] = ()

    @classmethod
    def for_tokenizer(cls, tokenizer) -> Markup:
        one_token = {}
        for m in (STRING_DELIM, TOOL_START, TOOL_END):
            ids = tokenizer.encode(m, add_special_tokens=False)
            if len(ids) == 1:
                one_token[m] = int(ids[0])
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        return cls(one_token, tuple(sorted(int(i) for i, t in added.items() if getattr(t, "special", False))))


class _Lark:
    """Rules of one grammar; markers that are one token are written as that token (`<[id]>`)."""

    def __init__(self, markup: Markup):
        self.rules: list[str] = []
        self.one_token = markup.one_token
        self.special_ids = markup.special_ids

    def marker(self, text: str) -> str:
        return f"<[{self.one_token[text]}]>" if text in self.one_token else json.dumps(text, ensure_ascii=False)

    def rule(self, body: str) -> str:
        self.rules.append(f"r{len(self.rules)}: {body}")
        return f"r{len(self.rules) - 1}"

    def string(self, schema: dict | None = None) -> str:
        lo, hi = (schema or {}).get("minLength", 0), (schema or {}).get("maxLength")
        if lo or hi is not None:  # counted characters: none may be '<'
            text = f"/[^<]{{{lo},{'' if hi is None else hi}}}/"
            if STRING_DELIM in self.one_token:
                return f"{self.marker(STRING_DELIM)} {self.rule(text)} {self.marker(STRING_DELIM)}"
            return self.rule(f'/<\\|"\\|>[^<]{{{lo},{"" if hi is None else hi}}}<\\|"\\|>/')
        if STRING_DELIM in self.one_token:  # text between two delimiter tokens
            return f"{self.marker(STRING_DELIM)} STRING_TEXT? {self.marker(STRING_DELIM)}"
        return "STRING"  # one lexeme: no '<|' inside, so the closing delimiter is unambiguous

    def literal(self, value) -> str:
        if isinstance(value, str):
            return f"{self.marker(STRING_DELIM)} {json.dumps(value, ensure_ascii=False)} {self.marker(STRING_DELIM)}"
        if isinstance(value, (bool, int, float)) or value is None:
            return json.dumps(json.dumps(value))
        raise ValueError("enum and const values must be strings, numbers, booleans or null")

    def value(self, schema) -> str:
        """A Lark expression for the values that validate against `schema`."""
        if schema is True or schema == {}:
            return "value"
        if not isinstance(schema, dict):
            raise ValueError(f"a schema must be an object, not {json.dumps(schema)[:40]}")
        kinds = schema.get("type")
        allowed = _KEYWORDS[None] | _ANNOTATIONS
        for k in kinds if isinstance(kinds, list) else [kinds]:
            allowed = allowed | _KEYWORDS.get(k, set())
        extra = sorted(set(schema) - allowed)
        if extra:
            raise ValueError(f"'{extra[0]}' is not supported in strict tool parameters")
        if "const" in schema or "enum" in schema:
            values = [schema["const"]] if "const" in schema else schema["enum"]
            return self.rule(" | ".join(self.literal(v) for v in values))
        if "anyOf" in schema:
            rest = {k: v for k, v in schema.items() if k != "anyOf" and k not in _ANNOTATIONS}
            if rest:
                raise ValueError("'anyOf' beside other keywords is not supported in strict tool parameters")
            return self.rule(" | ".join(self.value(s) for s in schema["anyOf"]))
        if kinds is None:
            return "value"
        if isinstance(kinds, list):
            return self.rule(" | ".join(self.value({**schema, "type": k}) for k in kinds))
        if kinds == "string":
            return self.rule(self.string(schema))
        simple = {"integer": "INTEGER", "number": "NUMBER", "boolean": '"true" | "false"', "null": '"null"'}
        if kinds in simple:
            return self.rule(simple[kinds])
        if kinds == "array":
            item = self.value(schema.get("items", True))
            return self.rule(f'"[" ({item} ("," {item})*)? "]"')
        if kinds == "object":
            return self.rule(f'"{{" {self.members(schema)} "}}"')
        raise ValueError(f"unknown type {kinds!r} in strict tool parameters")

    def members(self, schema: dict) -> str:
        """The inside of an object (between the braces): its properties in sorted order, each
        present if required, optional otherwise, separated by commas."""
        props = schema.get("properties") or {}
        required = set(schema.get("required") or ())
        if not props and schema.get("additionalProperties", True) is not False:
            return '(member ("," member)*)?'
        if required - set(props):
            raise ValueError(f"required property {sorted(required - set(props))[0]!r} is not in 'properties'")
        parts = []
        for key in sorted(props):
            if not re.fullmatch(_KEY, key):
                raise ValueError(f"property name {key!r} is not supported in strict tool parameters")
            parts.append((f"{json.dumps(key + ':')} {self.value(props[key])}", key in required))
        # first: nothing written yet (no comma before the next); rest: something was
        first, rest = "", ""
        for member, needed in reversed(parts):
            new_rest = f'"," {member} {rest}' if needed else f'("," {member})? {rest}'
            alt = f"{member} {rest}"
            first = alt if needed else f"({alt} | {first})" if first else f"({alt})?"
            rest = new_rest
        return first or ""

    def text(self, start: str, *terminals: str) -> str:
        string = r'STRING: /<\|"\|>([^<]|<+[^<|])*<\|"\|>/' + "\nSTRING_TEXT: /(.|\\n)+/"
        generic = [
            f'value: {self.string()} | NUMBER | "true" | "false" | "null" | "{{" member ("," member)* "}}"'
            f' | "{{}}" | "[" (value ("," value)*)? "]"',
            "member: KEY_COLON value",
            f"KEY_COLON: /{_KEY}:/",
        ]
        numbers = ["INTEGER: /-?(0|[1-9][0-9]*)/", r"NUMBER: /-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?/"]
        return "\n".join([f"start: {start}", *self.rules, *generic, string, *numbers, *terminals]) + "\n"


def tool_call_grammar(
    tools: dict[str, dict | None], name: str | None = None, markup: Markup | None = None, *, free_text: bool = False
) -> str:
    """The Lark grammar (llguidance's dialect) of a tool call whose arguments follow the schemas.

    tools: name -> its `parameters` schema, or None for a tool whose arguments are free (not
    strict). name: the forced tool (its start `<|tool_call>call:NAME{` is prefilled: the grammar
    is the rest of its arguments, `}` and the end marker); None: a call to one of `tools`, whose
    `<|tool_call>call:` is prefilled, or with `free_text` (tool_choice auto) any output in which
    every call, and only what follows its start marker, is constrained.
    markup: how the tokenizer writes the markers (Markup.for_tokenizer; None: spelled out).
    Raises ValueError for a schema it cannot enforce."""
    g = _Lark(markup or Markup())
    end = g.marker(TOOL_END)

    def body(schema) -> str:
        if schema is None:
            return '(member ("," member)*)?'
        if schema.get("type", "object") != "object":
            raise ValueError("strict tool parameters must be an object schema")
        return g.members({**schema, "type": "object"})

    if name is not None:
        return g.text(f'{body(tools[name])} "}}" {end}')
    calls = g.rule(" | ".join(f'{json.dumps(n + "{")} {body(s)} "}}" {end}' for n, s in tools.items()))
    if not free_text:
        return g.text(calls)
    if TOOL_START in g.one_token:  # any token but the start marker, between calls
        start, free = g.one_token[TOOL_START], f"<[^{g.one_token[TOOL_START]}]>*"
        return g.text(f'{free} (<[{start}]> "call:" {calls} {free})*')
    # The start marker spelled out: text without it, up to and including it, is one lexeme;
    # special tokens (the thinking markers...) come between text lexemes.
    text = r"TEXT: /(.|\n)+/ & ~/(.|\n)*<\|tool_call>(.|\n)*/" + f"\nTO_CALL: TEXT? {json.dumps(TOOL_START)}"
    if g.special_ids:
        special = ",".join(str(i) for i in g.special_ids)
        return g.text(f'(TEXT | <[{special}]> | TO_CALL "call:" {calls})*', text)
    return g.text(f'(TEXT | TO_CALL "call:" {calls})*', text)
