"""OpenAI's Responses API (`POST /v1/responses`) over the same worker, settings and cache.

A body is translated into the chat request `api.parse_chat` validates: `instructions` -> a
system message, `input` (text, or message / function_call / function_call_output items) ->
messages (`input_image` parts -> `image_url` parts, `input_audio` parts as they are), function
`tools`, `max_output_tokens`, `reasoning.effort` -> the thinking switch.
`previous_response_id` continues a conversation kept in memory (`ResponseStore`, the last 256
responses; `instructions` are not carried over, as OpenAI documents). The answer comes back as
output items (`reasoning`, `message` with `output_text`, `function_call`); streamed in OpenAI's
event sequence (`_Output`): response.created, response.in_progress, then per item
output_item.added, its deltas (reasoning_summary_text, output_text, function_call_arguments) and
their .done, output_item.done with the whole item, and response.completed, whose output is
those items; each event has its `sequence_number`.
"""

from __future__ import annotations

import time
from collections import OrderedDict

from starlette.responses import JSONResponse

from ..gemma_format import Content, Reasoning
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


def _part(p: dict) -> dict:
    """One Responses content part -> the chat part api.parse_chat checks."""
    if p["type"] == "input_image":
        return {"type": "image_url", "image_url": {"url": p.get("image_url")}}
    if p["type"] == "input_audio":  # the same shape as chat's: {"data": BASE64, "format": "wav"}
        return {"type": "input_audio", "input_audio": p.get("input_audio")}
    return {"type": "text", "text": p.get("text") or ""}


def _text(content, where: str):
    """A message's content -> chat content: its text, or OpenAI parts when it has input_image or
    input_audio parts (checked by api.parse_chat: a data: URL, a clip)."""
    if isinstance(content, str):
        return content
    texts, media = ("input_text", "output_text", "text"), ("input_image", "input_audio")
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") in (*texts, *media) for p in content):
        if not any(p["type"] in media for p in content):
            return "".join(p.get("text") or "" for p in content)
        return [_part(p) for p in content]
    raise ApiError(
        400, f"'{where}' must be text or a list of input_text, input_image and input_audio parts", param=where
    )


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
        keys = ("name", "description", "parameters", "strict")
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


def _reasoning_item(rid: str, text: str) -> dict:
    return {"type": "reasoning", "id": rid, "summary": [{"type": "summary_text", "text": text}]}


def _message_item(mid: str, text: str, status: str = "completed") -> dict:
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    return {"type": "message", "id": mid, "status": status, "role": "assistant", "content": [part]}


def _call_item(key: str, call, status: str = "completed", arguments: str | None = None) -> dict:
    return {
        "type": "function_call",
        "id": f"fc_{key}_{call.index}",
        "call_id": f"call_{key}_{call.index}",
        "name": call.name,
        "arguments": call.arguments if arguments is None else arguments,
        "status": status,
    }


def _items(run: Run, out) -> list[dict]:
    key = run.id.split("-")[-1][:24]
    items = [_reasoning_item(f"rs_{key}", out.reasoning)] if out.reasoning else []
    if out.content or not out.tool_calls:
        items.append(_message_item(f"msg_{key}", out.content))
    items.extend(_call_item(key, c) for c in out.tool_calls)
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


def _finish(run: Run, store: ResponseStore, out, items: list[dict] | None = None) -> dict:
    """The completed response (`items`: its output, as streamed; None: from `out`); its
    conversation goes into the store for previous_response_id."""
    items = _items(run, out) if items is None else items
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


class _Output:
    """The output items of a streamed response, opened, grown and closed as the events arrive,
    in OpenAI's event sequence: output_item.added, then the item's deltas (reasoning summary
    text, output text, function call arguments) and their .done, then output_item.done with the
    whole item. A thinking run is a reasoning item, a text run a message, each call its own item."""

    def __init__(self, run: Run):
        self.key = run.id.split("-")[-1][:24]
        self.items: list[dict] = []  # the closed items, in output order
        self.kind, self.text = None, ""  # the open item: "reasoning" | "message" | None
        self.seq = 0

    def event(self, kind: str, **fields) -> str:
        self.seq += 1
        return sse_event(kind, {"type": kind, "sequence_number": self.seq - 1, **fields})

    def _id(self, prefix: str) -> str:
        n = sum(i["id"].startswith(prefix) for i in self.items)
        return f"{prefix}_{self.key}" + (f"_{n}" if n else "")

    def add(self, e) -> list[str]:
        """Events for one gemma_format event (Reasoning, Content or ToolCall)."""
        kind = "reasoning" if isinstance(e, Reasoning) else "message" if isinstance(e, Content) else "call"
        out = self.close() if self.kind != kind else []
        if kind == "call":
            return out + self._call(e)
        at = len(self.items)
        if self.kind is None:
            self.kind, self.text, self.item_id = kind, "", self._id("rs" if kind == "reasoning" else "msg")
            out += self._open(at)
        self.text += e.text
        ids = {"item_id": self.item_id, "output_index": at}
        if kind == "reasoning":
            return [*out, self.event("response.reasoning_summary_text.delta", **ids, summary_index=0, delta=e.text)]
        return [*out, self.event("response.output_text.delta", **ids, content_index=0, delta=e.text, logprobs=[])]

    def _open(self, at: int) -> list[str]:
        ids = {"item_id": self.item_id, "output_index": at}
        if self.kind == "reasoning":
            item = {"type": "reasoning", "id": self.item_id, "summary": []}
            part = {"type": "summary_text", "text": ""}
            return [
                self.event("response.output_item.added", output_index=at, item=item),
                self.event("response.reasoning_summary_part.added", **ids, summary_index=0, part=part),
            ]
        item = {**_message_item(self.item_id, "", "in_progress"), "content": []}
        part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        return [
            self.event("response.output_item.added", output_index=at, item=item),
            self.event("response.content_part.added", **ids, content_index=0, part=part),
        ]

    def close(self) -> list[str]:
        """Events that close the open item (none if none is open)."""
        if self.kind is None:
            return []
        at, text, ids = len(self.items), self.text, {"item_id": self.item_id, "output_index": len(self.items)}
        if self.kind == "reasoning":
            item = _reasoning_item(self.item_id, text)
            out = [
                self.event("response.reasoning_summary_text.done", **ids, summary_index=0, text=text),
                self.event("response.reasoning_summary_part.done", **ids, summary_index=0, part=item["summary"][0]),
            ]
        else:
            item = _message_item(self.item_id, text)
            out = [
                self.event("response.output_text.done", **ids, content_index=0, text=text, logprobs=[]),
                self.event("response.content_part.done", **ids, content_index=0, part=item["content"][0]),
            ]
        self.items.append(item)
        self.kind = None
        return [*out, self.event("response.output_item.done", output_index=at, item=item)]

    def _call(self, call) -> list[str]:
        at, item = len(self.items), _call_item(self.key, call)
        ids = {"item_id": item["id"], "output_index": at}
        self.items.append(item)
        return [
            self.event(
                "response.output_item.added", output_index=at, item={**item, "arguments": "", "status": "in_progress"}
            ),
            self.event("response.function_call_arguments.delta", **ids, delta=item["arguments"]),
            self.event("response.function_call_arguments.done", **ids, name=item["name"], arguments=item["arguments"]),
            self.event("response.output_item.done", output_index=at, item=item),
        ]

    def end(self) -> list[str]:
        """Close the open item; an output with no text and no call gets an empty message."""
        out = self.close()
        if not any(i["type"] in ("message", "function_call") for i in self.items):
            out += self.add(Content(""))[:-1] + self.close()  # opened and closed, without an empty delta
        return out


async def _events(run: Run, store: ResponseStore):
    out = _Output(run)
    yield out.event("response.created", response=_response(run, [], "in_progress"))
    yield out.event("response.in_progress", response=_response(run, [], "in_progress"))
    try:
        async for e in parsed_events(run):
            for s in out.add(e):
                yield s
        for s in out.end():
            yield s
        yield out.event("response.completed", response=_finish(run, store, run.parser.result, out.items))
    except ApiError as e:
        yield out.event("error", code=str(e.status), message=e.message, param=None)
    finally:
        run.log_line()
