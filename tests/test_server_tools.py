"""Tool calls and thinking through the real HTTP stack and the official `openai` client.

The app is the real one (server.create_app); its worker replays scripted Gemma 4 output token by
token through the fixture tokenizer, with no model, and records the prompts it is given: so these
tests see exactly what a client sees whatever the token boundaries, and what the template renders.
"""

import json
import socket
import threading
import time
from types import SimpleNamespace
from typing import ClassVar

import openai
import pytest

from mlx_specdec.load import load_tokenizer
from mlx_specdec.stats import TokenRecord

from .helpers.paths import TARGET

QUESTION = [{"role": "user", "content": "What does the len function do?"}]


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather now",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
SCRIPT = '<|channel>thought\nNeed the weather.<channel|><|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'


@pytest.fixture(scope="module")
def scripted():
    """The real app over a worker that replays SCRIPT token by token (no model): prompts are recorded."""
    import uvicorn

    from mlx_specdec.serve.app import create_app
    from mlx_specdec.serve.worker import CachePool, Done, Worker

    tok = load_tokenizer(TARGET)
    pieces = []
    detok = tok.detokenizer
    for t in tok.encode(SCRIPT, add_special_tokens=False):
        detok.add_token(t)
        pieces.append(detok.last_segment)

    class Scripted(Worker):
        prompts: ClassVar[list] = []

        def run(self):
            self.pool = CachePool(lambda: None, 0)
            while (job := self.jobs.get()) is not None:
                self.prompts.append(tok.decode(job.ids))
                for i, p in enumerate(pieces):
                    job.emit(
                        TokenRecord(
                            token=0,
                            text=p,
                            from_draft=False,
                            round=i,
                            draft_tokens=0,
                            accepted=0,
                            prompt_tokens=len(job.ids),
                            ttft_s=0.0,
                            elapsed_s=0.01 * i,
                            finish_reason="stop" if i == len(pieces) - 1 else None,
                        )
                    )
                job.emit(Done(0))

    worker = Scripted(lambda: None)
    worker.bundle = SimpleNamespace(
        name="scripted", tokenizer=tok, target=SimpleNamespace(config={"max_position_embeddings": 4096}, vocab_size=512)
    )
    worker.start()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(worker), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield openai.OpenAI(base_url=f"http://127.0.0.1:{sock.getsockname()[1]}/v1", api_key="x", max_retries=0), worker
    server.should_exit = True
    worker.stop()
    thread.join(5)


def test_tool_call_and_thinking_become_openai_fields(scripted):
    client, _ = scripted
    r = client.chat.completions.create(model="scripted", messages=QUESTION, tools=TOOLS)
    msg = r.choices[0].message
    assert r.choices[0].finish_reason == "tool_calls" and msg.content is None
    assert msg.model_extra["reasoning_content"] == "Need the weather."
    call = msg.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streamed_tool_call_reassembles_from_deltas_of_one_token_each(scripted):
    client, _ = scripted
    reasoning, calls, finish = "", {}, None
    for chunk in client.chat.completions.create(model="scripted", messages=QUESTION, tools=TOOLS, stream=True):
        for c in chunk.choices:
            assert not c.delta.content  # no raw markup leaks into content
            reasoning += (c.delta.model_extra or {}).get("reasoning_content") or ""
            for d in c.delta.tool_calls or []:
                slot = calls.setdefault(d.index, {"name": "", "arguments": ""})
                slot["name"] += d.function.name or ""
                slot["arguments"] += d.function.arguments or ""
            finish = c.finish_reason or finish
    assert reasoning == "Need the weather." and finish == "tool_calls"
    assert calls[0]["name"] == "get_weather" and json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_tool_round_trip_renders_calls_and_results_through_the_template(scripted):
    client, worker = scripted
    first = client.chat.completions.create(model="scripted", messages=QUESTION, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    messages = QUESTION + [
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
    ]
    client.chat.completions.create(model="scripted", messages=messages, tools=TOOLS)
    prompt = worker.prompts[-1]
    assert '<|tool>declaration:get_weather{description:<|"|>Weather now<|"|>' in prompt
    assert prompt.endswith(
        '<|turn>model\n<|tool_call>call:get_weather{city:<|"|>Paris<|"|>}<tool_call|>'
        '<|tool_response>response:get_weather{value:<|"|>sunny, 21 C<|"|>}<tool_response|>'
    )


def test_named_tool_choice_prefills_the_call_and_none_keeps_markup_as_content(scripted):
    client, worker = scripted
    client.chat.completions.create(
        model="scripted",
        messages=QUESTION,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )
    assert worker.prompts[-1].endswith("<|turn>model\n<|tool_call>call:get_weather{")
    r = client.chat.completions.create(model="scripted", messages=QUESTION, tools=TOOLS, tool_choice="none")
    assert "<|tool>" not in worker.prompts[-1] and r.choices[0].message.tool_calls is None
    assert "<|tool_call>call:get_weather" in r.choices[0].message.content
