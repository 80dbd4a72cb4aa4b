"""Probe `specdec serve` as its users would, for eleven defects an agent-facing server must not have.

    python scripts/measure/serve_probe.py            # about 2-3 minutes on two CPU cores

Starts `specdec serve --demo` on a free port (a subprocess, killed at the end whatever happens),
replays each defect with the clients an agent uses (the `openai` client for chat and responses,
the `anthropic` client for messages; raw sockets for the security and half-sent body cases) and
prints one line per check: the defect's number, what was checked, PASS or FAIL with the figure.
Exit status 0 only if every check passes.

1. two interleaved 20-turn conversations sharing a system prompt each reuse their prefix every
   turn (`usage.prompt_tokens_details.cached_tokens`); 1b: a new session's first turn (after
   the first turn of another, and after its 20 turns) takes the shared system prompt from its cache;
2. a retry and an edited conversation after a 200-token answer reuse the common prefix, and so
   does the next turn with thinking on;
3. a forced tool call cut off by max_tokens never leaks tool-call markup (streamed and not);
4. /health answers within a second while a ~14 MB prompt is parsed, rendered and tokenised;
5. a request without max_tokens (or asking for more) stops at `--max-tokens`;
6. response_format json_schema output validates against its schema; penalties and logit_bias
   change the output or are refused, never ignored;
7. POST /v1/responses and /v1/messages (streamed and not) and GET /v1/models/{id} work with the
   official clients;
8. text/plain POSTs, a foreign Host and a CORS preflight are refused;
9. Retry-After from a full queue is no longer than the queue takes to drain, and a retry then is
   served;
10. a seeded sampled request gives the same text at draft_tokens 0, 3 and auto;
11. a half-sent request body is dropped with 408 within the body timeout.

The demo pair is tiny and random-ish: its answers are nonsense, so long answers are forced with
logit_bias (+100 on one token) where a length is needed. Not a test: it is the measurement.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request

import openai

try:
    import anthropic
except ImportError:  # pragma: no cover - the check then reports FAIL with the reason
    anthropic = None
try:
    import jsonschema
except ImportError:  # pragma: no cover
    jsonschema = None

MAX_TOKENS = 256  # the server's --max-tokens
MAX_QUEUE = 3
LONG = 200  # tokens of the answer after which a retry and an edit must still hit the cache
BODY_TIMEOUT = 2.0
# logit_bias that makes every token 'ing' (demo vocabulary): answers of a known length that
# re-tokenise as generated (no space for the template's trim to strip, no merge when repeated)
FORCE = {"288": 100}
MARKUP = re.compile(r"<\|tool_call>|<tool_call\|>|<\|\"\|>|<\|tool|call:\w+\{")  # Gemma 4 call syntax
SYSTEM = (
    "You are a careful coding agent working in a Python repository. Read the files you are given, "
    "explain what you change and why, keep every edit small, run the tests after each change, and "
    "never invent APIs that the repository does not define. "
) * 6

results: list[tuple[int, str, bool, str]] = []


def report(n: int | str, what: str, ok: bool, figure: str) -> None:
    results.append((n, what, ok, figure))
    print(f"{n!s:>3}. {what}: {'PASS' if ok else 'FAIL'} ({figure})", flush=True)


def check(n: int, what: str):
    """Decorator: run a check, turning an exception into a FAIL line with its reason."""

    def wrap(fn):
        def run(*args):
            try:
                fn(*args)
            except Exception as e:  # noqa: BLE001 - a probe reports, it does not stop
                report(n, what, False, f"{type(e).__name__}: {' '.join(str(e).split())[:160]}")

        return run

    return wrap


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw_http(port: int, request: bytes, *, timeout: float = 10.0) -> tuple[int, dict, bytes, float]:
    """Send raw bytes; returns (status, headers, body, seconds until the answer came)."""
    t0 = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        data = b""
        while True:
            try:
                chunk = s.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            m = re.search(rb"content-length: *(\d+)", head, re.I)
            if m and len(body) >= int(m.group(1)):
                break
    elapsed = time.perf_counter() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return status, headers, body, elapsed


def post(port: int, path: str, body: bytes, *, host: str | None = None, kind: str = "application/json") -> bytes:
    host = host or f"127.0.0.1:{port}"
    return (
        f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {kind}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode() + body


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=30) as r:
        return json.loads(r.read())


def chat(client, messages, **kw):
    extra = kw.pop("extra_body", {})
    return client.chat.completions.create(model="demo", messages=messages, extra_body=extra, **kw)


def cached(resp) -> int:
    details = resp.usage.prompt_tokens_details
    return (details.cached_tokens or 0) if details else 0


# 1 ------------------------------------------------------------------------------------------
@check(1, "two interleaved 20-turn agents sharing a system prompt")
def shared_prefix(client, port) -> None:
    talks = {"A": [{"role": "system", "content": SYSTEM}], "B": [{"role": "system", "content": SYSTEM}]}
    prev, misses, turns, first_b = {}, [], 0, None
    for turn in range(20):
        for name, msgs in talks.items():
            msgs.append({"role": "user", "content": f"Agent {name}, step {turn}: fix the bug in module_{turn}.py"})
            r = chat(client, msgs, max_tokens=6, temperature=0)
            got = cached(r)
            if name == "B" and turn == 0:
                first_b = (got, r.usage.prompt_tokens)
            elif name in prev and got < prev[name]:  # the previous prompt is a prefix of this one
                misses.append(f"{name}{turn}:{got}<{prev[name]}")
            prev[name] = r.usage.prompt_tokens
            turns += 1
            msgs.append({"role": "assistant", "content": r.choices[0].message.content or ""})
    report(
        1,
        "two interleaved 20-turn agents sharing a system prompt each reuse their prefix every turn",
        not misses,
        f"{38 - len(misses)}/38 later turns cached >= the previous prompt (last: A {prev['A']}, B {prev['B']} "
        "prompt tokens)" + (f"; misses {misses[:4]}" if misses else ""),
    )
    # a new session's first turn takes the shared system prompt from another session's cache:
    # B right after A's first turn, and C (a sub-agent, a title request) after the 20 turns
    late = chat(client, [talks["A"][0], {"role": "user", "content": "Name this session."}], max_tokens=4)
    firsts = {"B": first_b, "C": (cached(late), late.usage.prompt_tokens)}
    report(
        "1b",
        "a new session's first turn (B after A's first turn, C after 20) takes the shared system prompt",
        all(got >= total // 2 for got, total in firsts.values()),  # the system prompt is most of it
        "; ".join(f"{name} cached {got} of {total}" for name, (got, total) in firsts.items()),
    )


# 2 ------------------------------------------------------------------------------------------
@check(2, "retry and edit after a long answer")
def retry_and_edit(client, port) -> None:
    msgs = [
        {"role": "system", "content": "You review diffs for a small team; answer at length."},
        {"role": "user", "content": "Review this change: def add(a, b): return a - b"},
    ]
    first = chat(client, msgs, max_tokens=40, temperature=0, logit_bias=FORCE)
    msgs.append({"role": "assistant", "content": first.choices[0].message.content})
    msgs.append({"role": "user", "content": "And what about the tests?"})
    second = chat(client, msgs, max_tokens=LONG, temperature=0, logit_bias=FORCE)  # the long answer
    edited = [*msgs[:-1], {"role": "user", "content": "And what about the docs instead?"}]
    edit = chat(client, edited, max_tokens=20, temperature=0)  # the last question edited
    retry = chat(client, msgs, max_tokens=20, temperature=0)  # the same request again
    history = first.usage.prompt_tokens + first.usage.completion_tokens  # tokens before the edited message
    # thinking on: the history the client sends back holds no thinking (the demo model writes none)
    think = {"chat_template_kwargs": {"enable_thinking": True}}
    talk = [{"role": "user", "content": "Plan the refactor of the parser."}]
    one = chat(client, talk, max_tokens=40, temperature=0, logit_bias=FORCE, extra_body=think)
    talk += [{"role": "assistant", "content": one.choices[0].message.content}, {"role": "user", "content": "Go."}]
    two = chat(client, talk, max_tokens=4, temperature=0, extra_body=think)
    ok = (
        second.usage.completion_tokens >= LONG
        and cached(retry) >= retry.usage.prompt_tokens - 1
        and cached(edit) >= history
        and cached(two) >= one.usage.prompt_tokens + one.usage.completion_tokens - 1  # the last token never ran
    )
    report(
        2,
        f"a retry / an edit after a {second.usage.completion_tokens}-token answer reuse the common prefix",
        ok,
        f"retry cached {cached(retry)} of {retry.usage.prompt_tokens}; edit cached {cached(edit)} of "
        f"{edit.usage.prompt_tokens} (history before the edit: {history}); thinking on, next turn cached "
        f"{cached(two)} of {two.usage.prompt_tokens} (previous prompt and answer "
        f"{one.usage.prompt_tokens}+{one.usage.completion_tokens})",
    )


# 3 ------------------------------------------------------------------------------------------
@check(3, "forced tool call cut off by max_tokens")
def forced_tool(client, port) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "read_file",
                "description": "Read a file of the repository",
                "parameters": {
                    "type": "object",
                    "properties": {"path": {"type": "string"}, "start": {"type": "integer"}},
                    "required": ["path"],
                },
            },
        }
    ]
    choice = {"type": "function", "function": {"name": "read_file"}}
    msgs = [{"role": "user", "content": "Open the settings module and show me its first lines."}]
    leaks, seen, ncalls = [], [], 0
    for max_tokens in (2, 4, 8, 16, 48):
        for stream in (False, True):
            if stream:
                text, calls, finish = "", 0, None
                for chunk in chat(client, msgs, tools=tools, tool_choice=choice, max_tokens=max_tokens, stream=True):
                    for c in chunk.choices:
                        text += c.delta.content or ""
                        calls += len(c.delta.tool_calls or [])
                        finish = c.finish_reason or finish
            else:
                r = chat(client, msgs, tools=tools, tool_choice=choice, max_tokens=max_tokens)
                m = r.choices[0]
                text, calls, finish = m.message.content or "", len(m.message.tool_calls or []), m.finish_reason
            seen.append(f"{max_tokens}{'s' if stream else ''}:{finish}/{calls}call")
            ncalls += bool(calls)
            if MARKUP.search(text):  # plain text without markers is allowed, markup is not
                leaks.append(f"max_tokens {max_tokens}{' stream' if stream else ''}: {text[:40]!r}, {calls} calls")
    report(
        3,
        "a forced tool call cut at max_tokens 2-48 (streamed and not) leaks no call markup",
        not leaks,
        f"{10 - len(leaks)}/10 clean, {ncalls}/10 with tool_calls ({', '.join(seen[:4])}, ...)"
        + (f"; {leaks[:2]}" if leaks else ""),
    )


# 4 ------------------------------------------------------------------------------------------
@check(4, "event loop during a 14 MB prompt")
def huge_prompt(client, port) -> None:
    stop, lags = threading.Event(), []

    def ping() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            health(port)
            lags.append(time.perf_counter() - t0)
            time.sleep(0.1)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    t0 = time.perf_counter()
    text = "def f(x):\n    return x + 1\n" * (14_000_000 // 28)
    try:
        chat(client, [{"role": "user", "content": text}], max_tokens=4)
        outcome = "answered"
    except openai.APIStatusError as e:
        outcome = f"{e.status_code} {(e.body or {}).get('code') if isinstance(e.body, dict) else ''}"
    took = time.perf_counter() - t0
    stop.set()
    pinger.join()
    worst = max(lags) if lags else float("inf")
    report(
        4,
        f"/health while a {len(text) / 1e6:.0f} MB prompt is handled ({outcome} after {took:.1f} s)",
        worst < 1.0 and len(lags) >= took / 0.5,
        f"{len(lags)} pings, slowest {worst * 1e3:.0f} ms",
    )


# 5 ------------------------------------------------------------------------------------------
@check(5, "server-side token cap")
def token_cap(client, port) -> None:
    msgs = [{"role": "user", "content": "Write a long essay."}]
    none = chat(client, msgs, temperature=0, logit_bias=FORCE)  # no max_tokens, as aider sends
    try:
        more = chat(client, msgs, temperature=0, logit_bias=FORCE, max_tokens=10 * MAX_TOKENS)
        asked = f"{more.usage.completion_tokens} ({more.choices[0].finish_reason})"
        ok_more = more.usage.completion_tokens <= MAX_TOKENS
    except openai.BadRequestError:
        asked, ok_more = "400", True
    report(
        5,
        f"requests without max_tokens / with {10 * MAX_TOKENS} stop at --max-tokens {MAX_TOKENS}",
        none.usage.completion_tokens <= MAX_TOKENS and ok_more,
        f"without: {none.usage.completion_tokens} tokens ({none.choices[0].finish_reason}); asking more: {asked}",
    )


# 6 ------------------------------------------------------------------------------------------
SCHEMAS = [
    {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "file": {"type": "string", "maxLength": 24},
            "line": {"type": "integer", "minimum": 1},
            "severity": {"enum": ["low", "high"]},
        },
        "required": ["file", "line", "severity"],
        "additionalProperties": False,
    },
    {
        "type": "object",
        "properties": {
            "steps": {"type": "array", "items": {"type": "string", "maxLength": 16}, "maxItems": 3},
            "done": {"type": "boolean"},
        },
        "required": ["steps", "done"],
        "additionalProperties": False,
    },
]


def validate(doc, schema) -> None:
    if jsonschema is not None:
        jsonschema.validate(doc, schema)
        return
    if not isinstance(doc, dict) or set(schema["required"]) - set(doc):  # hand check: the required keys
        raise ValueError(f"{doc!r} lacks {schema['required']}")


@check(6, "structured output and penalties")
def structured(client, port) -> None:
    bad, n = [], 0
    for i, schema in enumerate(SCHEMAS):
        for stream, temp in ((False, 0.0), (False, 1.0), (True, 1.0)):
            fmt = {"type": "json_schema", "json_schema": {"name": f"s{i}", "schema": schema, "strict": True}}
            msgs = [{"role": "user", "content": f"Answer in JSON (case {i})."}]
            kw = {"response_format": fmt, "max_tokens": MAX_TOKENS, "temperature": temp, "seed": i}
            if stream:
                text, finish = "", None
                for c in chat(client, msgs, stream=True, **kw):
                    for choice in c.choices:
                        text, finish = text + (choice.delta.content or ""), choice.finish_reason or finish
            else:
                r = chat(client, msgs, **kw)
                text, finish = r.choices[0].message.content, r.choices[0].finish_reason
            n += 1
            try:
                validate(json.loads(text), schema)
            except Exception as e:  # noqa: BLE001
                kind = "stream" if stream else f"t={temp:g}"
                bad.append(f"schema {i} {kind} ({finish}): {type(e).__name__} on {text[:40]!r}")
    r = chat(
        client, [{"role": "user", "content": "JSON please"}], response_format={"type": "json_object"}, max_tokens=60
    )
    cut = r.choices[0].finish_reason == "length"  # json_object bounds no string: max_tokens may cut it
    if not cut:
        n += 1
        try:
            if not isinstance(json.loads(r.choices[0].message.content), dict):
                bad.append("json_object: not an object")
        except json.JSONDecodeError as e:
            bad.append(f"json_object: {e}")

    msgs = [{"role": "user", "content": "List the files, again and again."}]
    base = chat(client, msgs, max_tokens=40, temperature=0).choices[0].message.content
    ignored = []
    for name, kw in (
        ("presence_penalty", {"presence_penalty": 2.0}),
        ("frequency_penalty", {"frequency_penalty": 2.0}),
        ("logit_bias", {"logit_bias": FORCE}),
    ):
        try:
            if chat(client, msgs, max_tokens=40, temperature=0, **kw).choices[0].message.content == base:
                ignored.append(name)
        except openai.BadRequestError:
            pass  # refused: not ignored
    report(
        6,
        f"json_schema output validates ({'jsonschema' if jsonschema else 'hand check'}); penalties not ignored",
        not bad and not ignored,
        f"{n - len(bad)}/{n} valid"
        + (f" {bad[:2]}" if bad else "")
        + ("; json_object cut at length" if cut else "")
        + f"; ignored: {ignored or 'none'}",
    )


# 7 ------------------------------------------------------------------------------------------
@check(7, "the Responses, Messages and model routes")
def routes(client, port) -> None:
    got = []
    r = client.responses.create(model="demo", input="Say hello.", max_output_tokens=12)
    got.append(f"responses {r.status} {len(r.output_text)} chars")
    with client.responses.stream(model="demo", input="Say hello.", max_output_tokens=12) as s:
        events = [e.type for e in s]
        final = s.get_final_response()
    got.append(f"responses stream {len(events)} events, {final.status}")
    ok = r.status in ("completed", "incomplete") and final.status in ("completed", "incomplete")
    if anthropic is None:
        got.append("anthropic not installed")
        ok = False
    else:
        ac = anthropic.Anthropic(base_url=f"http://127.0.0.1:{port}", api_key="none", max_retries=0)
        m = ac.messages.create(
            model="demo", max_tokens=12, system="Be brief.", messages=[{"role": "user", "content": "Say hello."}]
        )
        got.append(f"messages {m.stop_reason}")
        with ac.messages.stream(model="demo", max_tokens=12, messages=[{"role": "user", "content": "Hi"}]) as s:
            text = "".join(s.text_stream)
            fm = s.get_final_message()
        got.append(f"messages stream {fm.stop_reason} {len(text)} chars")
        ok = ok and m.stop_reason in ("end_turn", "max_tokens") and fm.stop_reason in ("end_turn", "max_tokens")
    model = client.models.retrieve("demo")
    got.append(f"models/{model.id}")
    report(
        7, "/v1/responses, /v1/messages (streamed and not), /v1/models/{id}", ok and model.id == "demo", "; ".join(got)
    )


# 8 ------------------------------------------------------------------------------------------
@check(8, "web pages cannot drive the server")
def web_pages(client, port) -> None:
    body = json.dumps({"model": "demo", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    plain = raw_http(port, post(port, "/v1/chat/completions", body, kind="text/plain"))[0]
    form = raw_http(port, post(port, "/v1/chat/completions", body, kind="application/x-www-form-urlencoded"))[0]
    foreign = raw_http(port, post(port, "/v1/chat/completions", body, host=f"evil.example:{port}"))[0]
    rebind_get = raw_http(port, b"GET /v1/models HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n")
    preflight = raw_http(
        port,
        (
            f"OPTIONS /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nOrigin: https://evil.example\r\n"
            "Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n"
            "Connection: close\r\n\r\n"
        ).encode(),
    )
    cors = preflight[1].get("access-control-allow-origin")
    ok = plain == 415 and form == 415 and foreign == 421 and rebind_get[0] == 421 and cors is None
    report(
        8,
        "text/plain and form POSTs, a foreign Host (POST, GET), a CORS preflight are refused",
        ok,
        f"text/plain {plain}, form {form}, foreign Host {foreign}/{rebind_get[0]}, "
        f"preflight {preflight[0]} allow-origin {cors}",
    )


# 9 ------------------------------------------------------------------------------------------
@check(9, "Retry-After with a full queue")
def retry_after(client, port) -> None:
    msgs = [{"role": "user", "content": "Write a long essay."}]
    done: list[float] = []

    def one() -> None:
        c = openai.OpenAI(base_url=client.base_url, api_key="none", max_retries=0, timeout=120)
        chat(c, msgs, max_tokens=96, temperature=0, logit_bias=FORCE)
        done.append(time.perf_counter())

    threads = [threading.Thread(target=one, daemon=True) for _ in range(MAX_QUEUE + 1)]  # one runs, the rest queue
    for t in threads:
        t.start()
        time.sleep(0.15)
    deadline = time.perf_counter() + 20
    while health(port)["queued"] < MAX_QUEUE and time.perf_counter() < deadline:
        time.sleep(0.02)
    try:
        chat(client, msgs, max_tokens=4)
        report(9, "Retry-After from a full queue", False, "the queue was never full: no 429")
        return
    except openai.RateLimitError as e:
        wait = int(e.response.headers.get("retry-after", "0"))
    t_refused, waits = time.perf_counter(), [wait]
    served = False
    for _ in range(2):  # as the openai SDK does: up to 2 retries, each after the Retry-After it got
        time.sleep(waits[-1])
        try:
            chat(client, msgs, max_tokens=2)
            served = True
            break
        except openai.RateLimitError as e:
            waits.append(int(e.response.headers.get("retry-after", "0")))
    for t in threads:
        t.join()
    drained = max(done) - t_refused
    report(
        9,
        "Retry-After from a full queue is within the drain time (+1 s); the SDK's retries are served",
        wait <= drained + 1 and served,
        f"Retry-After {wait} s, queue drained in {drained:.1f} s; retries after {waits} s: "
        + (f"served on retry {len(waits)}" if served else "never served"),
    )


# 10 -----------------------------------------------------------------------------------------
@check(10, "seeded text whatever the draft schedule")
def seeded(client, port) -> None:
    msgs = [{"role": "user", "content": "Tell me about list comprehensions."}]
    texts, rounds = {}, {}
    for draft in (0, 3, "auto"):
        r = chat(client, msgs, max_tokens=40, temperature=0.8, seed=1234, extra_body={"draft_tokens": draft})
        texts[draft] = r.choices[0].message.content
        rounds[draft] = (r.model_extra or {}).get("specdec", {}).get("accepted")
    other = chat(client, msgs, max_tokens=40, temperature=0.8, seed=99).choices[0].message.content
    same = len(set(texts.values())) == 1
    report(
        10,
        "seed 1234 at temperature 0.8 gives one text at draft_tokens 0, 3, auto",
        same and other != texts[0],
        f"{len(set(texts.values()))} distinct texts of 3 (accepted drafts {rounds}); another seed differs: "
        f"{other != texts[0]}",
    )


# 11 -----------------------------------------------------------------------------------------
@check(11, "half-sent body")
def half_sent(client, port) -> None:
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000\r\n\r\n"
    ).encode()
    status, _, _, took = raw_http(port, head + b'{"messages": [', timeout=BODY_TIMEOUT + 10)
    alive = health(port)["status"] == "ok"
    report(
        11,
        f"a half-sent body is dropped with 408 within --body-timeout {BODY_TIMEOUT:g} s",
        status == 408 and took < BODY_TIMEOUT + 2 and alive,
        f"status {status or 'none'} after {took:.1f} s; server healthy after: {alive}",
    )


def main() -> int:
    port = free_port()
    cmd = [sys.executable, "-m", "mlx_specdec", "serve", "--demo", "--port", str(port)]
    cmd += ["--max-tokens", str(MAX_TOKENS), "--max-queue", str(MAX_QUEUE), "--body-timeout", str(BODY_TIMEOUT)]
    t0 = time.perf_counter()
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    log: list[str] = []
    threading.Thread(target=lambda: log.extend(server.stdout), daemon=True).start()
    try:
        deadline = time.perf_counter() + 120
        while time.perf_counter() < deadline:
            if server.poll() is not None:
                raise SystemExit(f"the server exited ({server.returncode}):\n{''.join(log)}")
            try:
                health(port)
                break
            except OSError:
                time.sleep(0.3)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0, timeout=120)
        chat(client, [{"role": "user", "content": "warm up"}], max_tokens=4)  # auto calibrates once
        print(f"server up on port {port} in {time.perf_counter() - t0:.1f} s: {' '.join(cmd[1:])}", flush=True)
        checks = [shared_prefix, retry_and_edit, forced_tool, huge_prompt, token_cap, structured, routes]
        checks += [web_pages, retry_after, seeded, half_sent]
        for fn in checks:
            fn(client, port)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    failed = [n for n, _, ok, _ in results if not ok]
    print(
        f"{len(results) - len(failed)}/{len(results)} pass in {time.perf_counter() - t0:.0f} s"
        + (f"; failed: {failed}" if failed else "")
    )
    return 0 if len(results) == 12 and not failed else 1  # 1 and 1b, 2-11


if __name__ == "__main__":
    sys.exit(main())
