"""OpenAI's Responses API (`POST /v1/responses`) over the same worker, settings and cache.

A body is translated into the chat request `api.parse_chat` validates: `instructions` -> a
system message, `input` (text, or message / function_call / function_call_output items) ->
messages (`input_image` parts -> `image_url` parts), function `tools`, `max_output_tokens`,
`reasoning.effort` -> the thinking switch.
`previous_response_id` continues a conversation kept in memory (`ResponseStore`, the last 256
responses; `instructions` are not carried over, as OpenAI documents). The answer comes back as
output items (`reasoning`, `message` with `output_text`, `function_call`); streamed as the
events response.created, response.output_item.added, response.output_text.delta, ...,
response.completed, each with its `sequence_number`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from starlette.responses import JSONResponse

from ..gemma_format import Content
from .api import ApiError, parse_chat
from .stream import JobStream, Run, collect_parsed, parsed_events, sse_event


class ResponseStore:
    """The conversations behind recent responses (id -> chat messages), least recent out first."""

    def __init__(self, size: int = 256):
        self.size, self._items = size, OrderedDict()

    def get(self, rid: str) -> list[dict]:
        if rid not in self._items:
            raise ApiError(404, f"no response '{rid}' is stored on this server", param="previous_response_id")
        self._items.move_to_end(rid)
        return list(self._items[rid])

    def put(self, rid: str, messages: list[dict]) -> None:
        self._items[rid] = messages
        while len(self._items) > self.size:
            self._items.popitem(last=False)


def _text(content, where: str):
    """A message's content -> chat content: its text, or OpenAI parts when it has input_image
    parts (their image_url, a data: URL, is checked by api.parse_chat)."""
    if isinstance(content, str):
        return content
    texts = ("input_text", "output_text", "text")
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") in (*texts, "input_image") for p in content
    ):
        if not any(p["type"] == "input_image" for p in content):
            return "".join(p.get("text") or "" for p in content)
        return [
            {"type": "image_url", "image_url": {"url": p.get("image_url")}}
            if p["type"] == "input_image"
            else {"type": "text", "text": p.get("text") or ""}
            for p in content
        ]
    raise ApiError(400, f"'{where}' must be text or a list of input_text and input_image parts", param=where)


def _messages(items, store: ResponseStore, previous: str | None) -> list[dict]:
    messages = store.get(previous) if previous else []
    if isinstance(items, str):
        return [*messages, {"role": "user", "content": items}]
    if not isinstance(items, list):
        raise ApiError(400, "'input' must be text or a list of items", param="input")
    names = {}
    for i, item in enumerate(items):
        where, kind = f"input[{i}]", item.get("type", "message") if isinstance(item, dict) else None
        if kind == "message" and item.get("role") in ("user", "assistant", "system", "developer"):
            messages.append({"role": item["role"], "content": _text(item.get("content"), f"{where}.content")})
        elif kind == "function_call":
            call = {"id": item.get("call_id"), "type": "function", "function": {"name": item.get("name")}}
            call["function"]["arguments"] = item.get("arguments") or "{}"
            names[item.get("call_id")] = item.get("name")
            if not messages or messages[-1]["role"] != "assistant":
                messages.append({"role": "assistant", "content": ""})
            messages[-1].setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            out = {"role": "tool", "tool_call_id": item.get("call_id"), "content": str(item.get("output") or "")}
            if names.get(item.get("call_id")):
                out["name"] = names[item.get("call_id")]
            messages.append(out)
        elif kind != "reasoning":
            raise ApiError(400, f"'{where}' is a {kind!r} item; give message or function call items", param=where)
    return messages


def parse_responses(body: dict, store: ResponseStore, model: str, defaults=None, draft="auto"):
    """POST /v1/responses body -> GenRequest (raises ApiError); `req.history` keeps what to store."""
    history = _messages(body.get("input"), store, body.get("previous_response_id"))
    system = [{"role": "system", "content": body["instructions"]}] if body.get("instructions") else []
    chat = {k: body[k] for k in ("model", "temperature", "top_p", "stream") if k in body}
    chat["messages"], chat["max_tokens"] = system + history, body.get("max_output_tokens")
    tools = body.get("tools") or []
    if any(not isinstance(t, dict) or t.get("type") != "function" for t in tools):
        raise ApiError(400, "only function tools are supported", param="tools")
    if tools:
        keys = ("name", "description", "parameters")
        chat["tools"] = [{"type": "function", "function": {k: t[k] for k in keys if k in t}} for t in tools]
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        choice = {"type": "function", "function": {"name": choice.get("name")}}
    if choice is not None:
        chat["tool_choice"] = choice
    effort = (body.get("reasoning") or {}).get("effort") if isinstance(body.get("reasoning"), dict) else None
    if effort is not None:
        chat["reasoning_effort"] = effort
    req = parse_chat(chat, model, defaults, draft)
    req.history = history
    return req


def _items(run: Run, out) -> list[dict]:
    key = run.id.split("-")[-1][:24]
    items = []
    if out.reasoning:
        summary = [{"type": "summary_text", "text": out.reasoning}]
        items.append({"type": "reasoning", "id": f"rs_{key}", "summary": summary})
    if out.content or not out.tool_calls:
        part = {"type": "output_text", "text": out.content, "annotations": []}
        items.append(
            {"type": "message", "id": f"msg_{key}", "status": "completed", "role": "assistant", "content": [part]}
        )
    for c in out.tool_calls:
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{key}_{c.index}",
                "call_id": f"call_{key}_{c.index}",
                "name": c.name,
                "arguments": c.arguments,
                "status": "completed",
            }
        )
    return items


def _response(run: Run, output: list, status: str) -> dict:
    done = status != "in_progress"
    return {
        "id": "resp_" + run.id.split("-")[-1],
        "object": "response",
        "created_at": int(time.time()),
        "status": status,
        "model": run.state.model,
        "output": output,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "parallel_tool_calls": False,
        "tool_choice": "auto",
        "tools": [],
        "usage": {
            "input_tokens": len(run.ids),
            "input_tokens_details": {"cached_tokens": run.cached},
            "output_tokens": len(run.records),
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": len(run.ids) + len(run.records),
        }
        if done
        else None,
    }


def _finish(run: Run, store: ResponseStore, out) -> dict:
    """The completed response; its conversation goes into the store for previous_response_id."""
    items = _items(run, out)
    response = _response(run, items, "incomplete" if run.finish_reason() == "length" else "completed")
    answer = {"role": "assistant", "content": out.content}
    calls = [i for i in items if i["type"] == "function_call"]
    if calls:
        answer["tool_calls"] = [
            {"id": c["call_id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
            for c in calls
        ]
    store.put(response["id"], [*run.req.history, answer])
    return response


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def respond(run: Run, request, store: ResponseStore):
    if run.req.stream:
        return JobStream(_events(run, store), run)
    try:
        out = await collect_parsed(run, request)
    except ApiError as e:
        return error_response(e)
    return JSONResponse(_finish(run, store, out))


async def _events(run: Run, store: ResponseStore):
    seq = iter(range(1 << 30))

    def event(kind: str, **fields) -> str:
        return sse_event(kind, {"type": kind, "sequence_number": next(seq), **fields})

    key = run.id.split("-")[-1][:24]
    yield event("response.created", response=_response(run, [], "in_progress"))
    text, message_open = "", False
    try:
        async for e in parsed_events(run):
            if isinstance(e, Content):
                if not message_open:
                    index = 1 if run.parser.result.reasoning else 0  # the thinking comes first
                    item = {"type": "message", "id": f"msg_{key}", "status": "in_progress", "role": "assistant"}
                    yield event("response.output_item.added", output_index=index, item={**item, "content": []})
                    part = {"type": "output_text", "text": "", "annotations": []}
                    yield event(
                        "response.content_part.added",
                        item_id=f"msg_{key}",
                        output_index=index,
                        content_index=0,
                        part=part,
                    )
                    message_open = True
                text += e.text
                yield event(
                    "response.output_text.delta",
                    item_id=f"msg_{key}",
                    output_index=index,
                    content_index=0,
                    delta=e.text,
                )
        out = run.parser.result
        items = _items(run, out)
        for i, item in enumerate(items):
            if item["type"] == "message" and message_open:
                ids = {"item_id": item["id"], "output_index": i, "content_index": 0}
                yield event("response.output_text.done", **ids, text=text)
                yield event("response.content_part.done", **ids, part=item["content"][0])
            else:
                yield event("response.output_item.added", output_index=i, item=item)
            if item["type"] == "function_call":
                ids = {"item_id": item["id"], "output_index": i}
                yield event("response.function_call_arguments.done", **ids, arguments=item["arguments"])
            yield event("response.output_item.done", output_index=i, item=item)
        yield event("response.completed", response=_finish(run, store, out))
    except ApiError as e:
        yield event("error", code=str(e.status), message=e.message, param=None)
    finally:
        run.log_line()
