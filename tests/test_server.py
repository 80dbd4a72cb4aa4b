"""`specdec serve` live on free loopback ports, driven by the official `openai` client.

Two servers: the demo pair (answers, streaming, caching, load, disconnects) and the fixture pair
with an API key, a one-slot queue and a 64-token context (the 4xx cases, the burst). Tool calls
and thinking through the same HTTP stack: test_server_tools.py.
"""

import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlparse

import openai
import psutil
import pytest

from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.prompt import chat_ids, text_ids
from mlx_specdec.settings import GenerationSettings

from .helpers.paths import DRAFTERS, TARGET

QUESTION = [{"role": "user", "content": "What does the len function do?"}]
GREEDY = {"temperature": 0, "extra_body": {"draft_tokens": 4}}

pytestmark = pytest.mark.slow  # servers in subprocesses; the app in-process: test_server_tools.py


class Server:
    """`specdec serve ... --port 0` in a subprocess; the URL comes from its first stdout line."""

    def __init__(self, args, tmp):
        self.log = tmp / "server.log"
        cmd = [sys.executable, "-c", "from mlx_specdec.__main__ import main; main()", "serve", "--port", "0", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=open(self.log, "w"), text=True)  # noqa: SIM115

    def wait_ready(self) -> "Server":
        line = self.proc.stdout.readline()
        assert "http://127.0.0.1:" in line, self.log.read_text()
        self.url = line.split()[2]
        self.host, self.port = urlparse(self.url).hostname, urlparse(self.url).port
        return self

    def client(self, key="none"):
        return openai.OpenAI(base_url=self.url, api_key=key, max_retries=0)

    def request(self, method, path, body=None, headers=None):
        """(status, headers, JSON body) over plain http.client."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        conn.request(method, path, body=data, headers={"Content-Type": "application/json", **(headers or {})})
        r = conn.getresponse()
        out = r.status, dict(r.getheaders()), json.loads(r.read() or b"null")
        conn.close()
        return out

    def rss(self) -> int:
        return psutil.Process(self.proc.pid).memory_info().rss

    def close(self):
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def servers(tmp_path_factory):
    """Both subprocess servers, started at once (loading takes most of their start-up)."""
    demo = Server(["--demo", "--max-context", "512", "--cache-bytes", str(8 * 2**20)], tmp_path_factory.mktemp("demo"))
    guarded = Server(
        [
            "--target",
            str(TARGET),
            "--drafter",
            str(DRAFTERS["dense"]),
            "--api-key",
            "sekret",
            "--max-queue",
            "1",
            "--max-context",
            "64",
        ],
        tmp_path_factory.mktemp("guarded"),
    )
    yield demo.wait_ready(), guarded.wait_ready()
    demo.close()
    guarded.close()


@pytest.fixture(scope="module")
def demo_server(servers):
    return servers[0]


@pytest.fixture(scope="module")
def guarded(servers):
    return servers[1]


@pytest.fixture(scope="module")
def demo():
    return load(demo=True)


def reference(bundle, messages, max_tokens):
    """What `specdec generate` gives for these messages: plain greedy decoding."""
    text, _, _ = generate(
        bundle, chat_ids(bundle.tokenizer, messages), GenerationSettings(max_tokens=max_tokens, draft=0)
    )
    return text


def stream_text(client, messages, max_tokens, **kw):
    """(reassembled content, finish_reason, usage) of a streamed chat completion."""
    parts, finish, usage = [], None, None
    for chunk in client.chat.completions.create(
        model="demo",
        messages=messages,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
        **kw,
    ):
        if chunk.usage is not None:
            usage = chunk.usage
        for c in chunk.choices:
            parts.append(c.delta.content or "")
            finish = c.finish_reason or finish
    return "".join(parts), finish, usage


# --- answers -------------------------------------------------------------------------------
def test_models_lists_the_served_model(demo_server):
    assert [m.id for m in demo_server.client().models.list()] == ["demo"]
    assert demo_server.request("GET", "/health")[2]["status"] == "ok"


def test_greedy_chat_equals_generate_and_streaming_reassembles_to_it(demo_server, demo):
    client = demo_server.client()
    r = client.chat.completions.create(model="demo", messages=QUESTION, max_tokens=24, **GREEDY)
    want = reference(demo, QUESTION, 24)
    assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
    assert r.usage.prompt_tokens == len(chat_ids(demo.tokenizer, QUESTION))
    spec = r.model_extra["specdec"]
    assert spec["rounds"] > 0 and spec["drafted"] >= spec["accepted"] > 0  # k=4 asked for: it drafted
    text, finish, usage = stream_text(client, QUESTION, 24, **GREEDY)
    assert text == want and finish == r.choices[0].finish_reason
    assert usage.completion_tokens == r.usage.completion_tokens


def test_completions_on_raw_text_equal_generate(demo_server, demo):
    r = demo_server.client().completions.create(model="demo", prompt="The len function", max_tokens=12, **GREEDY)
    want, _, _ = generate(
        demo, text_ids(demo.tokenizer, "The len function"), GenerationSettings(max_tokens=12, draft=0)
    )
    assert r.choices[0].text == want and r.object == "text_completion"


def test_seeded_sampling_repeats_and_takes_openai_signed_seeds(demo_server):
    client = demo_server.client()
    runs = [
        client.chat.completions.create(model="demo", messages=QUESTION, max_tokens=12, temperature=0.9, seed=-3)
        for _ in range(2)
    ]
    assert runs[0].choices[0].message.content == runs[1].choices[0].message.content


def test_follow_up_request_prefills_only_the_new_part(demo_server, demo):
    client = demo_server.client()
    first = [{"role": "user", "content": "Explain the with statement."}]
    a = client.chat.completions.create(model="demo", messages=first, max_tokens=16, **GREEDY)
    follow = first + [
        {"role": "assistant", "content": a.choices[0].message.content},
        {"role": "user", "content": "And open?"},
    ]
    b = client.chat.completions.create(model="demo", messages=follow, max_tokens=8, **GREEDY)
    cached = b.usage.prompt_tokens_details.cached_tokens
    assert cached >= len(chat_ids(demo.tokenizer, first))  # the whole first prompt came from the cache
    assert b.model_extra["specdec"]["prefilled_tokens"] == b.usage.prompt_tokens - cached
    assert b.choices[0].message.content == reference(demo, follow, 8)
    assert "cached=" in demo_server.log.read_text()  # one log line per request


def test_two_interleaved_sessions_sharing_a_system_prompt_each_reuse_their_prefix_every_turn(demo_server, demo):
    client = demo_server.client()
    system = {"role": "system", "content": "You answer questions about one Python codebase, briefly."}
    talks = {"a": [system], "b": [system]}
    cached = {"a": [], "b": []}
    for turn in range(20):
        for name, talk in talks.items():
            talk.append({"role": "user", "content": f"{name}{turn}?"})
            r = client.chat.completions.create(
                model="demo", messages=talk, max_tokens=2, temperature=0, extra_body={"draft_tokens": 2}
            )
            talk.append({"role": "assistant", "content": r.choices[0].message.content})
            cached[name].append(r.usage.prompt_tokens_details.cached_tokens)
    system_ids = len(chat_ids(demo.tokenizer, [system], add_generation_prompt=False))
    assert cached["b"][0] >= system_ids - 2  # b's first turn shares a's system prompt
    for name, hits in cached.items():  # every later turn reuses all of its own conversation so far
        assert all(later > earlier + 2 for earlier, later in zip(hits, hits[1:])), (name, hits)


def test_a_retry_and_an_edited_last_turn_reuse_the_common_prefix(demo_server, demo):
    client = demo_server.client()
    talk = [{"role": "user", "content": "Name a list method."}]
    first = client.chat.completions.create(model="demo", messages=talk, max_tokens=4, **GREEDY)
    n = first.usage.prompt_tokens
    again = client.chat.completions.create(model="demo", messages=talk, max_tokens=4, **GREEDY)
    assert again.usage.prompt_tokens_details.cached_tokens == n - 1  # all but the last id, which runs again
    assert again.choices[0].message.content == first.choices[0].message.content
    edited = [{"role": "user", "content": "Name a dict method."}]
    r = client.chat.completions.create(model="demo", messages=edited, max_tokens=4, **GREEDY)
    common = next(
        i for i, (a, b) in enumerate(zip(chat_ids(demo.tokenizer, talk), chat_ids(demo.tokenizer, edited))) if a != b
    )
    assert r.usage.prompt_tokens_details.cached_tokens == common
    assert r.choices[0].message.content == reference(demo, edited, 4)


def test_with_thinking_on_the_next_turn_still_hits_the_cache(demo_server, demo):
    client = demo_server.client()
    thinking = {"chat_template_kwargs": {"enable_thinking": True}, "draft_tokens": 2}
    talk = [{"role": "user", "content": "Why use a generator?"}]
    first = client.chat.completions.create(
        model="demo", messages=talk, max_tokens=24, temperature=0, extra_body=thinking
    )
    talk += [
        {"role": "assistant", "content": first.choices[0].message.content or ""},
        {"role": "user", "content": "And a list?"},
    ]
    r = client.chat.completions.create(model="demo", messages=talk, max_tokens=2, temperature=0, extra_body=thinking)
    assert r.usage.prompt_tokens_details.cached_tokens >= first.usage.prompt_tokens - 2


@pytest.mark.slow
def test_sixteen_streaming_clients_all_get_the_single_client_answer_in_bounded_memory(demo_server, demo):
    prompts = [QUESTION, [{"role": "user", "content": "What is a list?"}]]
    single = [stream_text(demo_server.client(), p, 12, **GREEDY)[0] for p in prompts]
    rss0 = demo_server.rss()

    def client_run(i):
        client = demo_server.client()
        return [(j % 2, stream_text(client, prompts[j % 2], 12, **GREEDY)[0]) for j in range(i, i + 2)]

    with ThreadPoolExecutor(16) as pool:
        results = [x for r in pool.map(client_run, range(16)) for x in r]
    assert len(results) == 32 and all(text == single[p] for p, text in results)
    health = demo_server.request("GET", "/health")[2]
    assert health["cache_bytes"] <= health["cache_limit_bytes"] and health["queued"] == 0
    assert demo_server.rss() - rss0 < 64 * 2**20, (rss0, demo_server.rss())


# --- faults --------------------------------------------------------------------------------
def raw_stream(server, body: dict, read_bytes: int) -> socket.socket:
    """Send a streaming request on a raw socket and read the first bytes of the answer."""
    data = json.dumps(body).encode()
    s = socket.create_connection((server.host, server.port), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
        + f"Host: {server.host}:{server.port}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    got = b""
    while len(got) < read_bytes:
        got += s.recv(4096)
    return s


def wait_idle(server, seconds=20):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        h = server.request("GET", "/health")[2]
        if not h["busy"] and h["queued"] == 0:
            return h
        time.sleep(0.05)
    raise AssertionError(f"still busy after {seconds} s: {h}")


def test_disconnect_mid_stream_cancels_and_the_next_request_is_correct(demo_server, demo):
    body = {"messages": QUESTION, "max_tokens": 400, "stream": True, "temperature": 0, "draft_tokens": 4}
    raw_stream(demo_server, body, 600).close()
    wait_idle(demo_server)  # 400 tokens would take seconds; the cancel stops it within a round
    cancelled = [line for line in demo_server.log.read_text().splitlines() if "/v1/chat/completions 499" in line]
    assert cancelled and int(cancelled[-1].split("completion=")[1].split()[0]) < 400  # stopped early
    r = demo_server.client().chat.completions.create(model="demo", messages=QUESTION, max_tokens=24, **GREEDY)
    assert r.choices[0].message.content == reference(demo, QUESTION, 24)


def test_disconnect_while_waiting_for_a_whole_answer_cancels_it_too(demo_server):
    data = json.dumps({"messages": QUESTION, "max_tokens": 400, "temperature": 0, "draft_tokens": 4}).encode()
    s = socket.create_connection((demo_server.host, demo_server.port), timeout=30)
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\n"
        + f"Host: {demo_server.host}:{demo_server.port}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
        + data
    )
    while not demo_server.request("GET", "/health")[2]["busy"]:
        time.sleep(0.01)
    s.close()
    wait_idle(demo_server)
    cancelled = [line for line in demo_server.log.read_text().splitlines() if "/v1/chat/completions 499" in line]
    assert cancelled and int(cancelled[-1].split("completion=")[1].split()[0]) < 400


KEY = {"Authorization": "Bearer sekret"}
CHAT = "/v1/chat/completions"


@pytest.mark.parametrize(
    "body, param",
    [
        (b"{not json", None),
        (b"[1, 2]", None),
        ({"messages": "hi"}, "messages"),
        ({"messages": QUESTION, "temperature": "hot"}, "temperature"),
        ({"messages": QUESTION, "top_p": 1.5}, "top_p"),
        ({"messages": QUESTION, "seed": 1.5}, "seed"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, "messages[0].content[0].image_url"),
        ({"messages": QUESTION, "max_tokens": 0}, "max_tokens"),
        ({"messages": QUESTION, "n": 2}, "n"),
        ({"messages": QUESTION, "draft_tokens": 12}, "draft_tokens"),
        ({"messages": QUESTION, "tool_choice": "required"}, "tool_choice"),
        ({"messages": [{"role": "user", "content": "word " * 80}]}, "messages"),  # longer than the 64-token context
    ],
)
def test_bad_requests_get_400_in_openai_error_shape(guarded, body, param):
    status, _, out = guarded.request("POST", CHAT, body, KEY)
    assert status == 400 and out["error"]["type"] == "invalid_request_error" and out["error"]["param"] == param
    assert "Traceback" not in out["error"]["message"]


def test_the_openai_client_sees_400_401_and_404(guarded):
    with pytest.raises(openai.BadRequestError):
        guarded.client("sekret").chat.completions.create(model="target_text", messages=QUESTION, n=2)
    with pytest.raises(openai.AuthenticationError):
        guarded.client("wrong").models.list()
    with pytest.raises(openai.NotFoundError):
        guarded.client("sekret").chat.completions.create(model="gpt-4o", messages=QUESTION)
    status, _, out = guarded.request("GET", "/v1/nowhere", headers=KEY)
    assert status == 404 and out["error"]["message"] == "no route GET /v1/nowhere"
    assert guarded.request("GET", "/health")[0] == 200  # health needs no key


def test_64_mib_body_gets_413_before_it_is_read(guarded):
    s = socket.create_connection((guarded.host, guarded.port), timeout=30)
    s.sendall(
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{guarded.port}\r\n".encode()
        + b"Authorization: Bearer sekret\r\nContent-Type: application/json\r\nContent-Length: 67108864\r\n\r\n"
        + b"{" * 65536
    )
    answer = b""
    while b'"error"' not in answer and (more := s.recv(65536)):
        answer += more
    s.close()
    assert answer.startswith(b"HTTP/1.1 413") and b'"error"' in answer


def test_burst_past_the_queue_gets_429_with_retry_after_then_serves_again(guarded):
    body = {"messages": QUESTION, "max_tokens": 60, "temperature": 0}
    statuses, lock = [], threading.Lock()

    def one(_):
        status, headers, _ = guarded.request("POST", CHAT, body, KEY)
        with lock:
            statuses.append((status, headers.get("retry-after") or headers.get("Retry-After")))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(one, range(8)))
    assert sum(s == 200 for s, _ in statuses) >= 2  # one running, one queued
    assert any(s == 429 and ra and int(ra) >= 1 for s, ra in statuses), statuses
    assert {s for s, _ in statuses} <= {200, 429}
    wait_idle(guarded)
    status, _, out = guarded.request("POST", CHAT, {"messages": QUESTION, "max_tokens": 4}, KEY)
    assert status == 200 and out["usage"]["completion_tokens"] >= 1


def test_serve_refuses_a_port_in_use_in_one_line():
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        r = CliRunner().invoke(app, ["serve", "--demo", "--port", str(port)])
    finally:
        busy.close()
    assert r.exit_code == 1
    assert r.output.strip() == f"error: cannot listen on 127.0.0.1:{port} (Address already in use)"


def test_messages_and_responses_apis_give_the_chat_answer_and_share_its_cache(demo_server, demo):
    import anthropic

    ask = [{"role": "user", "content": "What is a tuple?"}]
    chat = demo_server.client().chat.completions.create(model="demo", messages=ask, max_tokens=8, **GREEDY)
    root = demo_server.url.removesuffix("/v1")
    a = anthropic.Anthropic(base_url=root, api_key="x", max_retries=0).messages.create(
        model="demo", max_tokens=8, messages=ask, extra_body={"temperature": 0, "draft_tokens": 4}
    )
    assert a.content[0].text == chat.choices[0].message.content and a.stop_reason == "max_tokens"
    assert a.usage.cache_read_input_tokens == chat.usage.prompt_tokens - 1  # the same prompt, from the cache
    r = demo_server.client().responses.create(
        model="demo", input="What is a tuple?", max_output_tokens=8, temperature=0, extra_body={"draft_tokens": 4}
    )
    assert r.output_text == chat.choices[0].message.content and r.status == "incomplete"
    assert r.usage.input_tokens_details.cached_tokens == chat.usage.prompt_tokens - 1


def test_response_format_json_schema_gives_json_that_validates_and_equals_constrained_generate(demo_server, demo):
    import jsonschema

    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 10}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    messages = [{"role": "user", "content": "A person as JSON"}]
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, "strict": True}}
    r = demo_server.client().chat.completions.create(
        model="demo", messages=messages, max_tokens=60, response_format=fmt, **GREEDY
    )
    jsonschema.validate(json.loads(r.choices[0].message.content), schema)
    ids = chat_ids(demo.tokenizer, messages)
    settings = GenerationSettings(max_tokens=60, draft=0, grammar=("json_schema", json.dumps(schema)))
    assert r.choices[0].message.content == generate(demo, ids, settings).text


def test_health_reports_this_devices_numerics_verdict(demo_server):
    status, _, health = demo_server.request("GET", "/health")
    assert status == 200 and (health["numerics"]["exact"], health["numerics"]["plain_width"]) == (True, 1)
