"""Anthropic's Messages API (`POST /v1/messages`) over the same worker, settings and cache.

A body is translated into the chat request `api.parse_chat` validates (so both APIs share one
set of checks and defaults): `system` -> a system message, content blocks -> text (`image`
blocks -> `image_url` parts with data: URLs), `tool_use` blocks -> the assistant's tool calls,
`tool_result` blocks -> tool messages, `thinking` blocks dropped (the template drops thinking
from history), `tools` with `input_schema` -> functions, `thinking: {"type": "enabled"}` -> the
template's thinking switch. The answer comes back as
content blocks (`thinking`, `text`, `tool_use`) with a `stop_reason`; streamed as Anthropic's
events: message_start, content_block_start/delta/stop, message_delta, message_stop.
"""

from __future__ import annotations

import json

from starlette.responses import JSONResponse

from ..gemma_format import Content, Reasoning
from .api import ApiError, parse_chat
from .stream import JobStream, Run, collect_parsed, parsed_events, sse_event

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}


def error_response(e: ApiError) -> JSONResponse:
    kind = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error", 500: "api_error"}
    body = {"type": "error", "error": {"type": kind.get(e.status, "invalid_request_error"), "message": e.message}}
    return JSONResponse(body, status_code=e.status, headers=e.headers)


def _blocks(content, where: str) -> list[dict]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}]
    if not isinstance(content, list) or not all(isinstance(b, dict) for b in content):
        raise ApiError(400, f"'{where}' must be a string or a list of content blocks", param=where)
    return content


def _text(blocks: list[dict], where: str) -> str:
    parts = []
    for b in blocks:
        if b.get("type") == "text" and isinstance(b.get("text"), str):
            parts.append(b["text"])
        elif b.get("type") not in ("thinking", "redacted_thinking", "tool_use", "tool_result"):
            raise ApiError(400, f"'{where}' has a {b.get('type')!r} block; only text and tool blocks are supported")
    return "".join(parts)


def _content(blocks: list[dict], where: str):
    """A message's blocks -> chat content: their text, or OpenAI parts when there are images
    (an image block's base64 source becomes a data: URL; a url source is passed on)."""
    if not any(b.get("type") == "image" for b in blocks):
        return _text(blocks, where)
    parts = []
    for j, b in enumerate(blocks):
        if b.get("type") != "image":
            text = _text([b], where)
            parts += [{"type": "text", "text": text}] if text else []
            continue
        source = b.get("source") if isinstance(b.get("source"), dict) else {}
        if source.get("type") == "base64" and isinstance(source.get("data"), str):
            url = f"data:{source.get('media_type') or 'image/png'};base64,{source['data']}"
        elif source.get("type") == "url":
            url = source.get("url")
        else:
            at = f"{where}[{j}].source"
            raise ApiError(400, f'\'{at}\' must be {{"type": "base64", "media_type", "data"}}', param=at)
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return parts


def _call(block: dict) -> dict:
    function = {"name": block.get("name"), "arguments": block.get("input")}
    return {"id": block.get("id"), "type": "function", "function": function}


def to_chat(body: dict) -> dict:
    """An Anthropic Messages body -> the equivalent chat completions body."""
    messages = []
    if body.get("system"):
        messages.append({"role": "system", "content": _text(_blocks(body["system"], "system"), "system")})
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    for i, m in enumerate(body["messages"]):
        where = f"messages[{i}]"
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise ApiError(400, f"'{where}' must be an object with role user or assistant", param=where)
        blocks = _blocks(m.get("content"), f"{where}.content")
        for b in blocks:
            if b.get("type") == "tool_result":
                result = b.get("content")
                text = _text(_blocks(result, where), where) if isinstance(result, list) else str(result or "")
                messages.append({"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": text})
        msg = {"role": m["role"], "content": _content(blocks, f"{where}.content")}
        calls = [b for b in blocks if b.get("type") == "tool_use"]
        if calls:
            msg["tool_calls"] = [_call(b) for b in calls]
        if msg["content"] or calls or not any(b.get("type") == "tool_result" for b in blocks):
            messages.append(msg)
    out = {k: body[k] for k in ("model", "max_tokens", "temperature", "top_p", "top_k", "stream") if k in body}
    out["messages"], out["stop"] = messages, body.get("stop_sequences")
    if body.get("tools"):
        out["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.get("name"),
                    "description": t.get("description", ""),
                    "parameters": t.get("input_schema", {}),
                },
            }
            for t in body["tools"]
            if isinstance(t, dict)
        ]
    choice = body.get("tool_choice") or {}
    kind = choice.get("type") if isinstance(choice, dict) else None
    if kind in ("any", "none", "auto"):
        out["tool_choice"] = {"any": "required"}.get(kind, kind)
    elif kind == "tool":
        out["tool_choice"] = {"type": "function", "function": {"name": choice.get("name")}}
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        out["chat_template_kwargs"] = {"enable_thinking": thinking.get("type") == "enabled"}
    return out


def parse_messages(body: dict, model: str, defaults=None, draft="auto"):
    """POST /v1/messages body -> GenRequest (raises ApiError)."""
    return parse_chat(to_chat(body), model, defaults, draft)


def _usage(run: Run) -> dict:
    return {
        "input_tokens": len(run.ids) - run.cached,
        "output_tokens": len(run.records),
        "cache_read_input_tokens": run.cached,
        "cache_creation_input_tokens": 0,
    }


def _block(event, run: Run) -> dict:
    if isinstance(event, Reasoning):
        return {"type": "thinking", "thinking": event.text, "signature": ""}
    if isinstance(event, Content):
        return {"type": "text", "text": event.text}
    return {
        "type": "tool_use",
        "id": f"toolu_{run.id[-12:]}_{event.index}",
        "name": event.name,
        "input": json.loads(event.arguments),
    }


def _message(run: Run, content: list, stop_reason: str | None) -> dict:
    return {
        "id": "msg_" + run.id.split("-")[-1],
        "type": "message",
        "role": "assistant",
        "model": run.state.model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": _usage(run),
    }


async def respond(run: Run, request):
    if run.req.stream:
        return JobStream(_events(run), run)
    try:
        out = await collect_parsed(run, request)
    except ApiError as e:
        return error_response(e)
    content = [_block(Reasoning(out.reasoning), run)] if out.reasoning else []
    content += [_block(Content(out.content), run)] if out.content else []
    content += [_block(c, run) for c in out.tool_calls]
    return JSONResponse(_message(run, content, STOP_REASONS.get(run.finish_reason(), "end_turn")))


async def _events(run: Run):
    yield sse_event("message_start", {"type": "message_start", "message": _message(run, [], None)})
    index, open_kind = -1, None
    try:
        async for e in parsed_events(run):
            kind = type(e).__name__
            if kind != open_kind or kind == "ToolCall":
                if open_kind is not None:
                    yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
                index, open_kind = index + 1, kind
                start = _block(e, run)
                if kind == "ToolCall":
                    start["input"] = {}
                else:
                    start[start["type"]] = ""
                yield sse_event(
                    "content_block_start", {"type": "content_block_start", "index": index, "content_block": start}
                )
            if isinstance(e, Reasoning):
                delta = {"type": "thinking_delta", "thinking": e.text}
            elif isinstance(e, Content):
                delta = {"type": "text_delta", "text": e.text}
            else:
                delta = {"type": "input_json_delta", "partial_json": e.arguments}
            yield sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta})
        if open_kind is not None:
            yield sse_event("content_block_stop", {"type": "content_block_stop", "index": index})
        reason = STOP_REASONS.get(run.finish_reason(), "end_turn")
        delta = {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": None}, "usage": _usage(run)}
        yield sse_event("message_delta", delta)
        yield sse_event("message_stop", {"type": "message_stop"})
    except ApiError as e:
        yield sse_event("error", {"type": "error", "error": {"type": "api_error", "message": e.message}})
    finally:
        run.log_line()
