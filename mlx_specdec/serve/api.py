"""The OpenAI-compatible wire format of `specdec serve`: request validation and response bodies.

Pure Python (no mlx, no HTTP): `parse_chat` / `parse_completion` turn a decoded JSON body into
a `GenRequest` or raise `ApiError` (an OpenAI-shaped error with its HTTP status); the `*_body`
and `*_chunk` functions build the responses. Unknown fields are ignored, as OpenAI's clients
send many optional ones; fields that would change the output and that we cannot honour (n > 1,
logprobs, echo, suffix, audio) are refused with 400. Images come as `image_url` parts with
data: or http(s) URLs; app.py fetches (fetch.py) and places them in the prompt.

Extras beyond OpenAI's schema: `draft_tokens` (0-8, "auto" or "off") per request, and
`chat_template_kwargs` (e.g. {"enable_thinking": true}); every response carries the speculative
statistics under `specdec`, and `usage.prompt_tokens_details.cached_tokens` counts the prompt
tokens taken from the prompt cache.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import time
from dataclasses import dataclass, field
from typing import ClassVar

from ..errors import SpecdecError
from ..gemma_format import TOOL_START, Markup, ToolCall, tool_call_grammar
from ..settings import SamplingParams, parse_draft

ROLES = ("system", "developer", "user", "assistant", "tool")


class ApiError(Exception):
    """An error response: HTTP status plus OpenAI's {"error": {message, type, param, code}}."""

    TYPES: ClassVar[dict] = {
        400: "invalid_request_error",
        401: "authentication_error",
        404: "invalid_request_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
        500: "server_error",
    }

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None, headers: dict | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": self.TYPES.get(self.status, "invalid_request_error"),
                "param": self.param,
                "code": self.code,
            }
        }


@dataclass
class GenRequest:
    """One validated generation request (chat or completion), before tokenisation."""

    kind: str  # "chat" | "completion"
    model: str
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None  # None: up to the context limit
    sampling: SamplingParams = SamplingParams()  # noqa: RUF009 - frozen, shared safely
    stop: tuple[str, ...] = ()
    draft: int | str = "auto"
    grammar: tuple[str, str] | None = None  # response_format: ("json", "") or ("json_schema", schema text)
    logit_bias: tuple[tuple[int, float], ...] = ()
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    exactness: str | None = None  # None: the server's --exactness
    messages: list[dict] = field(default_factory=list)  # chat: normalised for the chat template
    tools: list[dict] | None = None
    tool_choice: str = "auto"  # "auto" | "none" | "required" | "function" (then tool_name)
    tool_name: str | None = None
    template_kwargs: dict = field(default_factory=dict)
    prompt: str | list[int] = ""  # completion: text or token ids

    @property
    def forced_prefix(self) -> str:
        """Text the model's answer is made to start with, so `tool_choice` is obeyed exactly."""
        if self.tool_choice == "required":
            return TOOL_START + "call:"
        if self.tool_choice == "function":
            return TOOL_START + f"call:{self.tool_name}{{"
        return ""

    def tool_grammar(self, markup: Markup | None = None) -> tuple[str, str] | None:
        """Calls to strict tools as a grammar (gemma_format.tool_call_grammar), or None: with
        `tool_choice` naming a strict tool, its arguments follow its schema; with 'required', or
        'auto' and no `response_format`, a call names one of `tools` and a strict tool's
        arguments follow its schema ('auto': the text around calls stays free).
        markup: gemma_format.Markup.for_tokenizer. Raises ValueError for a schema it cannot enforce."""
        strict = {}
        for t in self.tools or []:
            fn = t["function"]
            if fn.get("strict"):
                strict[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
        if self.tool_choice == "function" and self.tool_name in strict:
            return ("lark", tool_call_grammar({self.tool_name: strict[self.tool_name]}, self.tool_name, markup))
        if not strict or self.tool_choice not in ("required", "auto") or (self.tool_choice == "auto" and self.grammar):
            return None
        tools = {t["function"]["name"]: strict.get(t["function"]["name"]) for t in self.tools}
        return ("lark", tool_call_grammar(tools, None, markup, free_text=self.tool_choice == "auto"))

    @property
    def parse_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"


# --- validation helpers ----------------------------------------------------------------------
def _bad(param: str, message: str) -> ApiError:
    return ApiError(400, message, param=param)


def _number(body: dict, key: str, default, lo: float, hi: float, *, integer: bool = False, lo_open: bool = False):
    value = body.get(key, default)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if (
        isinstance(value, bool)
        or not isinstance(value, kind)
        or (isinstance(value, float) and not math.isfinite(value))
    ):
        raise _bad(key, f"'{key}' must be {'an integer' if integer else 'a number'}, not {json.dumps(value)[:40]}")
    if value < lo or value > hi or (lo_open and value == lo):
        raise _bad(key, f"'{key}' must be in {'(' if lo_open else '['}{lo}, {hi}], not {value}")
    return value


def _flag(body: dict, key: str, default: bool = False) -> bool:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise _bad(key, f"'{key}' must be true or false")
    return value


@dataclass(frozen=True)
class ImageInput:
    """An image from a request: its bytes, and where it was (for error messages)."""

    data: bytes
    where: str
    url: str | None = None  # an http(s) URL to fetch (fetch.py), then `data` is empty


MAX_IMAGES = 16  # per request; each costs its tower pass and up to 1120 soft tokens


def image_from_url(url, where: str) -> ImageInput:
    """An image URL -> ImageInput: a data: URL (base64) decoded, an http(s) URL kept for app.py to
    fetch (or refuse with --no-fetch); file: and every other scheme refused, never read."""
    if not isinstance(url, str):
        raise _bad(where, f"'{where}' must be a URL string")
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme in ("http", "https"):
        return ImageInput(b"", where, url)
    if scheme != "data":
        raise _bad(
            where,
            f"'{where}' must be a data: URL (data:image/png;base64,...) or http(s), not a {scheme or 'relative'} URL",
        )
    header, comma, payload = url[5:].partition(",")
    if not comma or not header.lower().endswith(";base64"):
        raise _bad(where, f"'{where}' must be a base64 data: URL (data:image/png;base64,...)")
    try:
        data = base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise _bad(where, f"'{where}' is not valid base64") from None
    return ImageInput(data, where)


def _image_part(part: dict, where: str) -> ImageInput:
    url = part.get("image_url")
    return image_from_url(url.get("url") if isinstance(url, dict) else url, f"{where}.image_url")


AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")


@dataclass(frozen=True)
class AudioInput:
    """An audio clip from an `input_audio` part ({"data": base64, "format": "wav"}; "mp3", "flac" and
    "ogg" too, read by content), and where it was."""

    data: bytes
    where: str


def _audio_part(part: dict, where: str) -> AudioInput:
    audio, where = part.get("input_audio"), f"{where}.input_audio"
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        raise _bad(where, f'\'{where}\' must be {{"data": BASE64, "format": "wav"}}')
    if str(audio.get("format", "wav")).lower() not in AUDIO_FORMATS:
        formats = ", ".join(f'"{f}"' for f in AUDIO_FORMATS)
        raise _bad(where, f"'{where}.format' must be one of {formats}, not {audio.get('format')!r}")
    try:
        return AudioInput(base64.b64decode("".join(audio["data"].split()), validate=True), where)
    except (binascii.Error, ValueError):
        raise _bad(where, f"'{where}.data' is not valid base64") from None


def _text(content, param: str):
    """Message content: a string or a list of text and image_url parts -> one string, or, when
    there are images, a list of strings and ImageInputs in their order (app.py places them)."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for i, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                parts.append(_image_part(part, f"{param}[{i}]"))
            elif isinstance(part, dict) and part.get("type") == "input_audio":
                parts.append(_audio_part(part, f"{param}[{i}]"))
            elif isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                raise _bad(
                    param, f'\'{param}\' parts must be {{"type": "text", "text": ...}} or {{"type": "image_url", ...}}'
                )
        if not any(isinstance(p, (ImageInput, AudioInput)) for p in parts):
            return "".join(parts)
        return parts
    raise _bad(param, f"'{param}' must be a string or a list of text and image_url parts")


def images_of(messages: list[dict], kind: type = ImageInput) -> list:
    """The request's images (or AudioInput clips with `kind`), in prompt order."""
    return [p for m in messages if isinstance(m.get("content"), list) for p in m["content"] if isinstance(p, kind)]


def _common(body: dict, kind: str, model: str, defaults: SamplingParams, draft_default) -> GenRequest:
    if body.get("model") is not None and body.get("model") != model:
        raise ApiError(
            404,
            f"The model '{body['model']}' does not exist; this server serves '{model}'",
            param="model",
            code="model_not_found",
        )
    if _number(body, "n", 1, 1, 2**31, integer=True) != 1:
        raise _bad("n", "only n=1 is supported (one generation at a time)")
    if body.get("logprobs") or body.get("top_logprobs"):
        raise _bad("logprobs", "logprobs are not supported")
    max_tokens = _number(body, "max_completion_tokens", None, 1, 2**31, integer=True)
    if max_tokens is None:
        max_tokens = _number(body, "max_tokens", None, 1, 2**31, integer=True)
    top_k = _number(body, "top_k", defaults.top_k, -1, 2**31, integer=True)
    seed = _number(body, "seed", None, -(2**63), 2**64 - 1, integer=True)
    sampling = SamplingParams(
        temp=float(_number(body, "temperature", defaults.temp, 0.0, 2.0)),
        top_p=float(_number(body, "top_p", defaults.top_p, 0.0, 1.0, lo_open=True)),
        top_k=max(top_k, 0),  # -1 (vLLM's "off") is 0 here
        min_p=float(_number(body, "min_p", defaults.min_p, 0.0, 1.0)),
        seed=None if seed is None else seed % 2**32,  # OpenAI's seeds are signed 64-bit
    )
    stop = body.get("stop")
    if stop is None:
        stop = []
    elif isinstance(stop, str):
        stop = [stop]
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop) or len(stop) > 16:
        raise _bad("stop", "'stop' must be a string or a list of up to 16 strings")
    try:
        draft = parse_draft(body.get("draft_tokens", draft_default))
    except SpecdecError as e:
        raise _bad("draft_tokens", str(e)) from None
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise _bad("stream_options", "'stream_options' must be an object")
    exactness = body.get("exactness")
    if exactness not in (None, "strict", "relaxed"):
        raise _bad("exactness", "'exactness' must be 'strict' or 'relaxed'")
    bias = body.get("logit_bias") or {}
    try:
        bias = tuple((int(t), float(b)) for t, b in dict(bias).items())
    except (TypeError, ValueError):
        raise _bad("logit_bias", "'logit_bias' maps token ids to numbers from -100 to 100") from None
    if any(t < 0 or not -100 <= b <= 100 for t, b in bias):
        raise _bad("logit_bias", "'logit_bias' maps token ids (>= 0) to numbers from -100 to 100")
    return GenRequest(
        kind=kind,
        model=model,
        stream=_flag(body, "stream"),
        include_usage=_flag(options, "include_usage"),
        max_tokens=max_tokens,
        sampling=sampling,
        stop=tuple(s for s in stop if s),
        draft=draft,
        grammar=_response_format(body.get("response_format")),
        logit_bias=bias,
        presence_penalty=float(_number(body, "presence_penalty", 0.0, -2.0, 2.0)),
        frequency_penalty=float(_number(body, "frequency_penalty", 0.0, -2.0, 2.0)),
        exactness=exactness,
    )


def _response_format(fmt) -> tuple[str, str] | None:
    """OpenAI's response_format -> a grammar (settings.GenerationSettings.grammar), or None for text."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return ("json", "")
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise _bad("response_format", "'response_format.json_schema.schema' must be a JSON Schema object")
        return ("json_schema", json.dumps(schema))
    raise _bad("response_format", "'response_format.type' must be 'text', 'json_object' or 'json_schema'")


def _message(m, i: int) -> dict:
    where = f"messages[{i}]"
    if not isinstance(m, dict) or m.get("role") not in ROLES:
        raise _bad(where, f"'{where}' must be an object with a role in {', '.join(ROLES)}")
    out = {"role": m["role"], "content": _text(m.get("content"), f"{where}.content")}
    if m["role"] == "tool":
        out["tool_call_id"] = m.get("tool_call_id")
        if isinstance(m.get("name"), str):
            out["name"] = m["name"]
    calls = m.get("tool_calls")
    if m["role"] == "assistant" and calls:
        if not isinstance(calls, list):
            raise _bad(f"{where}.tool_calls", f"'{where}.tool_calls' must be a list")
        out["tool_calls"] = []
        for j, c in enumerate(calls):
            fn = c.get("function") if isinstance(c, dict) else None
            if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
                raise _bad(f"{where}.tool_calls[{j}]", "each tool call needs function.name and function.arguments")
            args = fn.get("arguments") or "{}"
            try:  # the template renders arguments as Gemma's {key:value} from a mapping
                args = json.loads(args) if isinstance(args, str) else args
            except json.JSONDecodeError:
                raise _bad(f"{where}.tool_calls[{j}].function.arguments", "tool call arguments must be JSON") from None
            out["tool_calls"].append(
                {"id": c.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}}
            )
    return out


def parse_chat(body: dict, model: str, defaults: SamplingParams | None = None, draft="auto") -> GenRequest:
    """POST /v1/chat/completions body -> GenRequest (raises ApiError). `defaults`: sampling for omitted fields."""
    req = _common(body, "chat", model, defaults or SamplingParams(1.0), draft)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _bad("messages", "'messages' must be a non-empty list")
    req.messages = [_message(m, i) for i, m in enumerate(messages)]
    if len(images_of(req.messages)) > MAX_IMAGES:
        raise _bad("messages", f"a request may hold at most {MAX_IMAGES} images")
    if len(images_of(req.messages, AudioInput)) > MAX_IMAGES:
        raise _bad("messages", f"a request may hold at most {MAX_IMAGES} audio clips")
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list) or not all(
            isinstance(t, dict) and isinstance(t.get("function"), dict) and isinstance(t["function"].get("name"), str)
            for t in tools
        ):
            raise _bad("tools", '\'tools\' must be a list of {"type": "function", "function": {"name": ...}}')
        req.tools = tools or None
    choice = body.get("tool_choice", "auto") or "auto"
    names = [t["function"]["name"] for t in req.tools or []]
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name not in names:
            raise _bad("tool_choice", f"tool_choice names {name!r}, which is not in 'tools'")
        req.tool_choice, req.tool_name = "function", name
    elif choice in ("auto", "none", "required"):
        if choice == "required" and not names:
            raise _bad("tool_choice", "tool_choice 'required' needs 'tools'")
        req.tool_choice = choice
    else:
        raise _bad("tool_choice", '\'tool_choice\' must be auto, none, required or {"type": "function", ...}')
    if any(not isinstance(t["function"].get("strict", False), (bool, type(None))) for t in req.tools or []):
        raise _bad("tools", "'tools[].function.strict' must be true or false")
    try:
        req.tool_grammar()  # a schema the grammar cannot enforce is refused before it is queued
    except ValueError as e:
        raise _bad("tools", f"{e}; give 'strict': false to send this schema unenforced") from None
    kwargs = body.get("chat_template_kwargs") or {}
    if not isinstance(kwargs, dict):
        raise _bad("chat_template_kwargs", "'chat_template_kwargs' must be an object")
    effort = body.get("reasoning_effort")
    if effort is not None:
        kwargs.setdefault("enable_thinking", effort not in ("none", "minimal"))
    req.template_kwargs = kwargs
    return req


def parse_completion(body: dict, model: str, defaults: SamplingParams | None = None, draft="auto") -> GenRequest:
    """POST /v1/completions body -> GenRequest (raises ApiError). `defaults`: sampling for omitted fields."""
    req = _common(body, "completion", model, defaults or SamplingParams(1.0), draft)
    if body.get("echo") or body.get("suffix"):
        raise _bad("echo" if body.get("echo") else "suffix", "'echo' and 'suffix' are not supported")
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]  # a batch of one
    ok_ids = isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    if not (isinstance(prompt, str) and prompt) and not ok_ids:
        raise _bad("prompt", "'prompt' must be a non-empty string or list of token ids (one prompt)")
    req.prompt = prompt
    return req


# --- responses ----------------------------------------------------------------------------
def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
        "prompt_tokens_details": {"cached_tokens": cached_tokens},
    }


def tool_call_json(call: ToolCall, request_id: str) -> dict:
    return {
        "index": call.index,
        "id": f"call_{request_id[-12:]}_{call.index}",
        "type": "function",
        "function": {"name": call.name, "arguments": call.arguments},
    }


def envelope(kind: str, request_id: str, model: str, stream: bool) -> dict:
    obj = {"chat": "chat.completion", "completion": "text_completion"}[kind] + (
        ".chunk" if stream and kind == "chat" else ""
    )
    return {"id": request_id, "object": obj, "created": int(time.time()), "model": model}


def chat_message(content: str, reasoning: str, calls: list[ToolCall], request_id: str) -> dict:
    msg = {"role": "assistant", "content": content if content or not calls else None}
    if reasoning:
        msg["reasoning_content"] = reasoning
    if calls:
        msg["tool_calls"] = [tool_call_json(c, request_id) for c in calls]
    return msg
