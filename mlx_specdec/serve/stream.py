"""One request's generation as the event loop sees it: the job's items -> SSE chunks or one JSON body.

`Run` owns a request's `Job` (server_worker.py), the Gemma 4 output parser (chat only) and the
records, usage and statistics the response reports. `stream_response` sends server-sent events
(`data: {chunk}` ... `data: [DONE]`), `collect` one JSON body; both cancel the job as soon as
the client disconnects. Chat deltas: `content`, `reasoning_content` (the thinking channel), and
`tool_calls`, each call whole in one delta once it closes, so a client reassembles the same
calls whatever the token boundaries.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import uuid

from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse

from ..gemma_format import Content, GemmaParser, Markup, Reasoning, opens_reasoning
from ..prompt import chat_ids
from ..stats import RunStats
from .api import ApiError, GenRequest, chat_message, envelope, tool_call_json
from .api import usage as usage_json
from .worker import Done, Failed, Job

log = logging.getLogger("mlx_specdec.server")


class Run:
    """One request's generation as seen from the event loop: queued items and the log line."""

    def __init__(self, app_state, req: GenRequest, ids: list[int], path: str, images=None):
        self.state, self.req, self.ids, self.path = app_state, req, ids, path
        self.id = ("chatcmpl-" if req.kind == "chat" else "cmpl-") + uuid.uuid4().hex
        self.items: asyncio.Queue = asyncio.Queue()
        loop = asyncio.get_running_loop()
        server = app_state.settings
        cap = min(server.max_tokens, app_state.context_limit)  # --max-tokens: the default and the most
        tok = app_state.worker.bundle.tokenizer
        strict = req.kind == "chat" and any(t["function"].get("strict") for t in req.tools or [])
        tools = req.tool_grammar(Markup.for_tokenizer(tok)) if strict else None
        settings = dataclasses.replace(
            server,
            max_tokens=min(req.max_tokens or cap, cap),
            draft=req.draft,
            sampling=req.sampling,
            stop=req.stop,
            grammar=tools or req.grammar,  # strict tools' grammar; with auto, only without response_format
            logit_bias=req.logit_bias,
            presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty,
            exactness=req.exactness or server.exactness,
        )
        self.records: list = []
        self.cached = 0
        self.status = 200
        self.parser = None
        self.opened = False
        chat = req.kind == "chat"
        if chat:
            self.opened = not req.forced_prefix and opens_reasoning(tok.decode(ids[-8:]))  # the template opened it
            self.parser = self._parser()
        self.job = Job(
            ids=ids,
            emit=lambda item: loop.call_soon_threadsafe(self.items.put_nowait, item),
            settings=settings,
            next_turn=self.next_turn_ids if chat else None,
            # The prompt stays cached for a retry or an edit (prompt_cache.keep_for); never with
            # images: no pool entry holds image K/V (placeholders look alike whatever the image).
            snapshot=chat and not images,
            images=images,
        )

    def _parser(self) -> GemmaParser:
        tok = self.state.worker.bundle.tokenizer
        parser = GemmaParser.for_tokenizer(tok, tools=self.req.parse_tools, in_reasoning=self.opened)
        parser.feed(self.req.forced_prefix)  # the prefilled start of a forced tool call
        return parser

    def next_turn_ids(self, text: str) -> list[int]:
        """The ids the next turn's prompt starts with: this conversation plus the answer as a
        client sends it back (content and tool calls; the template drops the thinking).
        Runs on the worker thread, after the answer; raises SpecdecError if it cannot render."""
        parser = self._parser()
        parser.feed(text)
        parser.finish()
        out = parser.result
        message = {"role": "assistant", "content": out.content}
        if out.tool_calls:
            message["tool_calls"] = [
                {"id": c.index, "type": "function", "function": {"name": c.name, "arguments": json.loads(c.arguments)}}
                for c in out.tool_calls
            ]
        req = self.req
        return chat_ids(
            self.state.worker.bundle.tokenizer,
            [*req.messages, message],
            tools=req.tools if req.tool_choice != "none" else None,
            add_generation_prompt=False,
            **req.template_kwargs,
        )

    async def watch(self, receive) -> None:
        """Cancel the job when the client disconnects."""
        while (await receive())["type"] != "http.disconnect":
            pass
        self.job.cancel()

    async def items_until_done(self):
        """Yield the job's TokenRecords; ends on Done, raises ApiError on Failed."""
        while True:
            item = await self.items.get()
            if isinstance(item, Done):
                self.cached = item.cached_tokens
                return
            if isinstance(item, Failed):
                self.status = item.status
                raise ApiError(item.status, item.message)
            if not self.records:  # known from the first token on, so a cancelled run logs it too
                self.cached = len(self.ids) - item.prompt_tokens
            self.records.append(item)
            yield item

    def finish_reason(self) -> str:
        last = self.records[-1].finish_reason if self.records else "stop"
        if last != "length" and self.parser is not None and self.parser.result.tool_calls:
            return "tool_calls"
        return last  # "length" even with a call: it was closed as far as it was written

    def stats(self) -> dict:
        s = RunStats.from_records(self.records).to_dict()
        s["prefilled_tokens"] = len(self.ids) - self.cached
        return s

    def usage(self) -> dict:
        return usage_json(len(self.ids), len(self.records), self.cached)

    def log_line(self) -> None:
        s = RunStats.from_records(self.records)
        log.info(
            "%s %d prompt=%d cached=%d completion=%d %.1f tok/s %.2f accepted/round",
            self.path,
            self.status,
            len(self.ids),
            self.cached,
            s.generated_tokens,
            s.decode_tokens_per_s,
            s.mean_accepted_per_round,
        )


def _deltas(events, request_id: str) -> list[dict]:
    out = []
    for e in events:
        if isinstance(e, Content):
            out.append({"content": e.text})
        elif isinstance(e, Reasoning):
            out.append({"reasoning_content": e.text})
        else:
            out.append({"tool_calls": [tool_call_json(e, request_id)]})
    return out


def _sse(obj) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


class JobStream(StreamingResponse):
    """Server-sent events whose job is cancelled as soon as the client goes away."""

    def __init__(self, content, run: Run):
        super().__init__(content, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self.run = run

    async def __call__(self, scope, receive, send) -> None:
        watcher = asyncio.create_task(self.run.watch(receive))
        try:
            await self.stream_response(send)
        except OSError:
            pass  # the client disconnected while we were writing
        finally:
            watcher.cancel()
            self.run.job.cancel()


async def _events(run: Run):
    req, model = run.req, run.state.model
    head = envelope(req.kind, run.id, model, stream=True)
    try:
        if req.kind == "chat":
            yield _sse(
                {
                    **head,
                    "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}],
                }
            )
        async for record in run.items_until_done():
            if run.parser is None:
                pieces = [record.text] if record.text else []
                chunks = [{"index": 0, "text": p, "finish_reason": None} for p in pieces]
            else:
                chunks = [
                    {"index": 0, "delta": d, "finish_reason": None}
                    for d in _deltas(run.parser.feed(record.text), run.id)
                ]
            for c in chunks:
                yield _sse({**head, "choices": [c]})
        last = {"index": 0, "finish_reason": None}
        if run.parser is not None:
            for d in _deltas(run.parser.finish(), run.id):
                yield _sse({**head, "choices": [{"index": 0, "delta": d, "finish_reason": None}]})
            last["delta"] = {}
        else:
            last["text"] = ""
        last["finish_reason"] = run.finish_reason()
        yield _sse({**head, "choices": [last], "specdec": run.stats()})
        if req.include_usage:
            yield _sse({**head, "choices": [], "usage": run.usage()})
    except ApiError as e:
        yield _sse(e.body())
    finally:
        run.log_line()
    yield "data: [DONE]\n\n"


async def collect(run: Run, request: Request) -> JSONResponse:
    watcher = asyncio.create_task(run.watch(request.receive))
    try:
        text = "".join([r.text async for r in run.items_until_done()])
    finally:
        watcher.cancel()
        run.log_line()
    body = envelope(run.req.kind, run.id, run.state.model, stream=False)
    if run.parser is None:
        choice = {"index": 0, "text": text, "finish_reason": run.finish_reason(), "logprobs": None}
    else:
        run.parser.feed(text)
        run.parser.finish()
        out = run.parser.result
        choice = {
            "index": 0,
            "message": chat_message(out.content, out.reasoning, out.tool_calls, run.id),
            "finish_reason": run.finish_reason(),
            "logprobs": None,
        }
    return JSONResponse({**body, "choices": [choice], "usage": run.usage(), "specdec": run.stats()})


def stream_response(run: Run) -> StreamingResponse:
    return JobStream(_events(run), run)


# --- for the other wire formats (responses.py, messages.py) ------------------------------------
async def parsed_events(run: Run):
    """The run's output as gemma_format events (Content, Reasoning, ToolCall), then those the
    end of output completes; raises ApiError on a failed or cancelled run. Chat runs only."""
    async for record in run.items_until_done():
        for e in run.parser.feed(record.text):
            yield e
    for e in run.parser.finish():
        yield e


async def collect_parsed(run: Run, request: Request):
    """The whole output, parsed (`Parsed`), cancelling the job if the client goes away."""
    watcher = asyncio.create_task(run.watch(request.receive))
    try:
        async for _ in parsed_events(run):
            pass
    finally:
        watcher.cancel()
        run.log_line()
    return run.parser.result


def sse_event(name: str, obj: dict) -> str:
    """One server-sent event with its `event:` name (Anthropic's and the Responses API's framing)."""
    return f"event: {name}\ndata: {json.dumps(obj, ensure_ascii=False)}\n\n"
