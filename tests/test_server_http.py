"""The HTTP side of `specdec serve` in process, over a worker that replays a script (no model).

Safe defaults (Host, Content-Type, CORS, body timeout), the --max-tokens cap, an event loop
that keeps answering while a huge prompt is tokenised, Retry-After from measured throughput,
GET /v1/models/{id}, and a forced tool call cut off by its token limit.
"""

import http.client
import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import ClassVar

import openai
import pytest

from mlx_specdec.load import load_tokenizer
from mlx_specdec.settings import GenerationSettings
from mlx_specdec.stats import TokenRecord

from .conftest import TARGET

QUESTION = [{"role": "user", "content": "What does the len function do?"}]
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {}}}},
    }
]


class SlowTokenizer:
    """The fixture tokenizer, whose chat template waits for `release` once `block` is set."""

    def __init__(self, tok):
        self._tok, self.block, self.release, self.entered = tok, threading.Event(), threading.Event(), threading.Event()

    def apply_chat_template(self, *args, **kwargs):
        if self.block.is_set():
            self.entered.set()
            assert self.release.wait(30)
        return self._tok.apply_chat_template(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tok, name)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer(TARGET)


def start_app(tok, **app_kwargs):
    """(base URL, worker, stop) of the real app on a loopback port over a scripted worker."""
    import uvicorn

    from mlx_specdec.serve.app import create_app
    from mlx_specdec.serve.worker import CachePool, Done, Worker

    class Scripted(Worker):
        jobs_seen: ClassVar[list] = []
        script: ClassVar[list] = ["Hello", "."]
        finish: ClassVar[str] = "stop"

        def run(self):
            self.pool = CachePool(lambda: None, 0)
            while (job := self.jobs.get()) is not None:
                self.jobs_seen.append(job)
                for i, piece in enumerate(self.script):
                    last = i == len(self.script) - 1
                    job.emit(
                        TokenRecord(
                            token=0,
                            text=piece,
                            from_draft=False,
                            round=i,
                            draft_tokens=0,
                            accepted=0,
                            prompt_tokens=len(job.ids),
                            ttft_s=0.0,
                            elapsed_s=0.01 * i,
                            finish_reason=self.finish if last else None,
                        )
                    )
                job.emit(Done(0))

    worker = Scripted(lambda: None, max_queue=1)
    worker.bundle = SimpleNamespace(
        name="scripted",
        tokenizer=tok,
        target=SimpleNamespace(config={"max_position_embeddings": 4096}, vocab_size=512),
        numerics=None,  # as a loaded Bundle before its probe ran
    )
    worker.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if app_kwargs.pop("guarded", False):
        from mlx_specdec.serve.security import allowed_hosts

        app_kwargs["hosts"] = allowed_hosts("127.0.0.1", port, ["box.lan"])
    server = uvicorn.Server(uvicorn.Config(create_app(worker, **app_kwargs), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    for _ in range(1000):
        if server.started:
            break
        time.sleep(0.01)

    def stop():
        server.should_exit = True
        worker.stop()
        thread.join(5)

    return f"http://127.0.0.1:{port}", worker, stop


@pytest.fixture(scope="module")
def app(tok):
    slow = SlowTokenizer(tok)
    url, worker, stop = start_app(
        slow,
        guarded=True,
        cors_origin="https://ok.example",
        body_timeout=0.5,
        settings=GenerationSettings(max_tokens=100, max_context=1000),
    )
    yield SimpleNamespace(url=url, worker=worker, tok=slow, port=int(url.rsplit(":", 1)[1]))
    stop()


def raw(app, method, path, body=b"", headers=None):
    """(status, headers, body bytes) over http.client with exactly the headers given."""
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=30)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    for k, v in {"Host": f"127.0.0.1:{app.port}", "Content-Length": str(len(body)), **(headers or {})}.items():
        if v is not None:
            conn.putheader(k, v)
    conn.endheaders(body)
    r = conn.getresponse()
    out = r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    conn.close()
    return out


def client(app):
    return openai.OpenAI(base_url=app.url + "/v1", api_key="x", max_retries=0)


BODY = json.dumps({"messages": QUESTION}).encode()
JSON = {"Content-Type": "application/json"}


# --- safe by default -------------------------------------------------------------------------
def test_a_text_plain_post_gets_415_and_json_gets_through(app):
    status, _, body = raw(app, "POST", "/v1/chat/completions", BODY, {"Content-Type": "text/plain"})
    assert status == 415 and "Content-Type: application/json" in json.loads(body)["error"]["message"]
    assert raw(app, "POST", "/v1/chat/completions", BODY, JSON)[0] == 200


@pytest.mark.parametrize("host", ["evil.example", "evil.example:80", "127.0.0.1:1"])
def test_a_foreign_host_header_gets_421(app, host):
    status, _, body = raw(app, "GET", "/v1/models", headers={"Host": host})
    assert status == 421 and "--allowed-host" in json.loads(body)["error"]["message"]


@pytest.mark.parametrize("host", ["localhost:{port}", "127.0.0.1:{port}", "[::1]:{port}", "box.lan", "box.lan:{port}"])
def test_loopback_names_and_allowed_hosts_are_answered(app, host):
    assert raw(app, "GET", "/v1/models", headers={"Host": host.format(port=app.port)})[0] == 200


def test_cors_preflight_is_answered_for_the_given_origin_only(app):
    ask = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
    status, headers, _ = raw(app, "OPTIONS", "/v1/chat/completions", headers={"Origin": "https://ok.example", **ask})
    assert status == 200 and headers["access-control-allow-origin"] == "https://ok.example"
    status, headers, _ = raw(app, "OPTIONS", "/v1/chat/completions", headers={"Origin": "https://evil.example", **ask})
    assert status == 400 and "access-control-allow-origin" not in headers


def test_without_cors_origin_no_cors_headers_are_sent(tok):
    url, _, stop = start_app(tok)
    try:
        app = SimpleNamespace(port=int(url.rsplit(":", 1)[1]))
        headers = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        status, got, _ = raw(app, "OPTIONS", "/v1/chat/completions", headers=headers)
        assert status == 405 and not any(k.startswith("access-control") for k in got)
    finally:
        stop()


def test_a_body_that_does_not_arrive_in_time_gets_408(app):
    s = socket.create_connection(("127.0.0.1", app.port), timeout=30)
    s.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\n"
        "Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{".encode()
    )
    answer = b""
    while b"\r\n\r\n" not in answer:
        answer += s.recv(4096)
    s.close()
    assert answer.startswith(b"HTTP/1.1 408")


# --- limits -------------------------------------------------------------------------------
def test_max_tokens_is_the_default_and_the_cap(app):
    client(app).chat.completions.create(model="scripted", messages=QUESTION)
    assert app.worker.jobs_seen[-1].settings.max_tokens == 100
    client(app).chat.completions.create(model="scripted", messages=QUESTION, max_tokens=10**6)
    assert app.worker.jobs_seen[-1].settings.max_tokens == 100
    client(app).chat.completions.create(model="scripted", messages=QUESTION, max_tokens=7)
    assert app.worker.jobs_seen[-1].settings.max_tokens == 7


def test_health_answers_while_a_prompt_is_being_tokenised(app):
    app.tok.block.set()
    done = []
    thread = threading.Thread(
        target=lambda: done.append(client(app).chat.completions.create(model="scripted", messages=QUESTION))
    )
    thread.start()
    try:
        assert app.tok.entered.wait(30)  # the template is running (and will not return until released)
        status, _, body = raw(app, "GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        assert not done
    finally:
        app.tok.block.clear()
        app.tok.release.set()
        thread.join(30)
    assert done and done[0].choices[0].message.content == "Hello."


def test_retry_after_is_the_measured_time_the_queue_needs_and_under_120_s(app):
    from mlx_specdec.serve.app import retry_after
    from mlx_specdec.serve.worker import Job

    worker = app.worker
    job = Job(ids=[1], emit=lambda item: None, settings=GenerationSettings(max_tokens=1000))
    worker.tokens_per_s, worker.tokens_per_job, worker.current = 50.0, 200.0, job
    assert retry_after(worker) == 4  # 200 expected tokens at 50 tok/s
    worker.tokens_per_s = 0.01
    assert retry_after(worker) == 110
    worker.current = None
    assert retry_after(worker) == 1


# --- models, tool calls --------------------------------------------------------------------
def test_get_model_by_id(app):
    assert client(app).models.retrieve("scripted").id == "scripted"
    with pytest.raises(openai.NotFoundError):
        client(app).models.retrieve("gpt-4o")


def test_a_forced_tool_call_cut_off_by_its_limit_is_a_tool_call_with_finish_reason_length(app):
    app.worker.script, app.worker.finish = ["city:", '<|"|>Pa', "r"], "length"
    try:
        forced = {"type": "function", "function": {"name": "get_weather"}}
        r = client(app).chat.completions.create(model="scripted", messages=QUESTION, tools=TOOLS, tool_choice=forced)
        msg = r.choices[0].message
        assert r.choices[0].finish_reason == "length" and not msg.content
        assert msg.tool_calls[0].function.name == "get_weather"
        assert json.loads(msg.tool_calls[0].function.arguments) == {"city": "Par"}
        chunks = client(app).chat.completions.create(
            model="scripted", messages=QUESTION, tools=TOOLS, tool_choice=forced, stream=True
        )
        text = "".join(c.delta.content or "" for ch in chunks for c in ch.choices)
        assert "<|" not in text
    finally:
        app.worker.script, app.worker.finish = ["Hello", "."], "stop"


def test_strict_tools_are_generated_under_their_grammar_and_non_strict_ones_are_not(app):
    forced = {"type": "function", "function": {"name": "get_weather"}}
    strict = [{"type": "function", "function": {**TOOLS[0]["function"], "strict": True}}]
    json_mode = {"type": "json_object"}
    for tools, choice, fmt, kind in [
        (strict, forced, None, "lark"),
        (TOOLS, forced, None, None),  # not strict: as before
        (strict, "auto", None, "lark"),  # free text, constrained calls
        (strict, "auto", json_mode, "json"),  # the answer's format wins
    ]:
        extra = {"response_format": fmt} if fmt else {}
        client(app).chat.completions.create(
            model="scripted", messages=QUESTION, tools=tools, tool_choice=choice, **extra
        )
        grammar = app.worker.jobs_seen[-1].settings.grammar
        assert (grammar and grammar[0]) == kind
    tool = {"type": "function", "strict": True, **{k: v for k, v in TOOLS[0]["function"].items()}}
    client(app).responses.create(
        model="scripted", input="hi", tools=[tool], tool_choice={"type": "function", "name": "get_weather"}
    )
    assert app.worker.jobs_seen[-1].settings.grammar[0] == "lark"


def test_strict_parameters_the_grammar_cannot_enforce_get_400(app):
    params = {"type": "object", "properties": {"city": {"type": "string", "pattern": "^[A-Z]"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": params, "strict": True}}]
    with pytest.raises(openai.BadRequestError) as e:
        client(app).chat.completions.create(model="scripted", messages=QUESTION, tools=tools, tool_choice="required")
    assert e.value.body["message"] == (
        "'pattern' is not supported in strict tool parameters; give 'strict': false to send this schema unenforced"
    )


# --- Anthropic's Messages API, with its official client --------------------------------------
TOOL_SCRIPT = [
    "<|channel>thought\nNeed",
    " the weather.<channel|>",
    "<|tool_call>call:get_weather{city:",
    '<|"|>Paris<|"|>}<tool_call|>',
]
ANTHROPIC_TOOLS = [
    {"name": "get_weather", "description": "Weather now", "input_schema": TOOLS[0]["function"]["parameters"]}
]


def anthropic_client(app):
    import anthropic

    return anthropic.Anthropic(base_url=app.url, api_key="x", max_retries=0)


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_anthropic_messages_answer_streamed_and_not(app):
    client = anthropic_client(app)
    r = client.messages.create(
        model="scripted", max_tokens=50, system="Be brief.", messages=[{"role": "user", "content": "hi"}]
    )
    assert [b.type for b in r.content] == ["text"] and r.content[0].text == "Hello."
    assert r.stop_reason == "end_turn" and r.usage.output_tokens == 2 and r.role == "assistant"
    with client.messages.stream(model="scripted", max_tokens=50, messages=[{"role": "user", "content": "hi"}]) as s:
        kinds = [e.type for e in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop" and "content_block_delta" in kinds
    assert final.content[0].text == "Hello." and final.stop_reason == "end_turn"
    assert "Be brief." in app.tok.decode(app.worker.jobs_seen[-2].ids)


def test_anthropic_tool_use_and_thinking_blocks_and_a_tool_result_round_trip(app):
    client = anthropic_client(app)
    app.worker.script = TOOL_SCRIPT
    try:
        ask = [{"role": "user", "content": "Weather in Paris?"}]
        kw = {"model": "scripted", "max_tokens": 50, "tools": ANTHROPIC_TOOLS}
        r = client.messages.create(messages=ask, thinking={"type": "enabled", "budget_tokens": 20}, **kw)
        assert [b.type for b in r.content] == ["thinking", "tool_use"] and r.stop_reason == "tool_use"
        assert r.content[0].thinking == "Need the weather."
        assert r.content[1].name == "get_weather" and r.content[1].input == {"city": "Paris"}
        with client.messages.stream(messages=ask, **kw) as s:
            final = s.get_final_message()
        assert [b.type for b in final.content] == ["thinking", "tool_use"]
        assert final.content[1].input == {"city": "Paris"} and final.stop_reason == "tool_use"
        call = r.content[1]
        follow = ask + [
            {"role": "assistant", "content": [b.model_dump() for b in r.content]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny, 21 C"}]},
        ]
        client.messages.create(messages=follow, **kw)
        prompt = app.tok.decode(app.worker.jobs_seen[-1].ids)
        assert '<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>' in prompt
        assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}' in prompt
    finally:
        app.worker.script = ["Hello", "."]


def test_anthropic_errors_come_in_anthropic_shape(app):
    import anthropic

    with pytest.raises(anthropic.NotFoundError):
        anthropic_client(app).messages.create(model="claude", max_tokens=5, messages=[{"role": "user", "content": "x"}])
    with pytest.raises(anthropic.BadRequestError):
        anthropic_client(app).messages.create(model="scripted", max_tokens=5, messages=[])


# --- OpenAI's Responses API, with the openai client ---------------------------------------------
def test_responses_answer_streamed_and_not_and_continue_from_a_previous_response(app):
    client_ = client(app)
    r = client_.responses.create(model="scripted", input="hi", instructions="Be brief.", max_output_tokens=20)
    assert r.output_text == "Hello." and r.status == "completed" and r.usage.output_tokens == 2
    assert "Be brief." in app.tok.decode(app.worker.jobs_seen[-1].ids)
    events = list(client_.responses.create(model="scripted", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "Hello."
    assert events[-1].response.output_text == "Hello."
    assert [e.sequence_number for e in events] == list(range(len(events)))
    client_.responses.create(model="scripted", input="and then?", previous_response_id=r.id)
    prompt = app.tok.decode(app.worker.jobs_seen[-1].ids)
    assert prompt.index("hi") < prompt.index("Hello.") < prompt.index("and then?") and "Be brief." not in prompt
    with pytest.raises(openai.NotFoundError):
        client_.responses.create(model="scripted", input="x", previous_response_id="resp_unknown")


def test_responses_function_call_and_its_output_round_trip(app):
    client_ = client(app)
    tools = [{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}]
    app.worker.script = TOOL_SCRIPT
    try:
        r = client_.responses.create(model="scripted", input="Weather in Paris?", tools=tools)
        calls = [o for o in r.output if o.type == "function_call"]
        assert [o.type for o in r.output] == ["reasoning", "function_call"]
        assert calls[0].name == "get_weather" and json.loads(calls[0].arguments) == {"city": "Paris"}
        streamed = list(client_.responses.create(model="scripted", input="Weather in Paris?", tools=tools, stream=True))
        assert [o.type for o in streamed[-1].response.output] == ["reasoning", "function_call"]
        output = {"type": "function_call_output", "call_id": calls[0].call_id, "output": "sunny, 21 C"}
        client_.responses.create(model="scripted", input=[output], tools=tools, previous_response_id=r.id)
        prompt = app.tok.decode(app.worker.jobs_seen[-1].ids)
        assert '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}' in prompt
    finally:
        app.worker.script = ["Hello", "."]


def test_streamed_responses_emit_reasoning_and_function_call_items_in_openais_event_sequence(app):
    tools = [{"type": "function", "name": "get_weather", "parameters": TOOLS[0]["function"]["parameters"]}]
    app.worker.script = [*TOOL_SCRIPT[:2], "It is", " Paris.", *TOOL_SCRIPT[2:]]
    try:
        with client(app).responses.stream(model="scripted", input="Weather in Paris?", tools=tools) as stream:
            events = list(stream)
            final = stream.get_final_response()
    finally:
        app.worker.script = ["Hello", "."]
    kinds = [e.type for e in events]
    added, done = "response.output_item.added", "response.output_item.done"
    assert kinds == [
        "response.created",
        "response.in_progress",
        *[added, "response.reasoning_summary_part.added"],
        *["response.reasoning_summary_text.delta"] * 2,
        *["response.reasoning_summary_text.done", "response.reasoning_summary_part.done", done],
        *[added, "response.content_part.added"],
        *["response.output_text.delta"] * 2,
        *["response.output_text.done", "response.content_part.done", done],
        *[added, "response.function_call_arguments.delta", "response.function_call_arguments.done", done],
        "response.completed",
    ]
    assert [o.type for o in final.output] == ["reasoning", "message", "function_call"]
    assert final.output[0].summary[0].text == "Need the weather." and final.output_text == "It is Paris."
    assert json.loads(final.output[2].arguments) == {"city": "Paris"} and final.output[2].name == "get_weather"
    items = [e.item for e in events if e.type == done]
    final_items = [o.model_dump(exclude_none=True) for o in events[-1].response.output]
    assert [i.model_dump(exclude_none=True) for i in items] == final_items  # each item whole when done
    assert [e.output_index for e in events if e.type == added] == [0, 1, 2]
    args = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert args == final.output[2].arguments
