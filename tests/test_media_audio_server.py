"""Audio through `specdec serve`: an OpenAI `input_audio` part (base64 WAV) gives what
`generate --audio` gives (transformers' tokens); bad clips are one 400 each.

The app is the real one over a real worker on the tiny audio fixture (tests/fixtures/media_audio),
in this process on a free loopback port.
"""

import base64
import http.client
import json
import socket
import threading
import time

import mlx.core as mx
import numpy as np
import pytest

from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.media_audio import attach_media, audio_placeholders
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.paths import FIXTURES

pytestmark = pytest.mark.slow  # a live server and a second load: ~3 s

AUDIO = FIXTURES / "media_audio"
CLIP = AUDIO / "clip.wav"
PROMPT = "Transcribe it."


@pytest.fixture(scope="module")
def post():
    import uvicorn

    from mlx_specdec.serve.app import create_app
    from mlx_specdec.serve.worker import Worker

    worker = Worker(lambda: load(target=AUDIO / "target", drafter=AUDIO / "assistant"))
    worker.start_and_wait()
    worker.bundle.tokenizer.eos_token_ids = []  # the reference runs whatever the tokens are
    settings = GenerationSettings(sampling=SamplingParams(temp=0.0), max_tokens=12, max_context=128, draft=3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    srv = uvicorn.Server(uvicorn.Config(create_app(worker, settings=settings), log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    port = sock.getsockname()[1]

    def send(body, route="/v1/chat/completions"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", route, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        out = r.status, json.loads(r.read())
        conn.close()
        return out

    send.bundle = worker.bundle
    yield send
    srv.should_exit = True
    worker.stop()
    thread.join(5)


def body(data: bytes, fmt="wav", draft=3):
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(data).decode(), "format": fmt}}
    content = [part, {"type": "text", "text": PROMPT}]
    return {"messages": [{"role": "user", "content": content}], "temperature": 0, "draft_tokens": draft}


@pytest.mark.parametrize("draft", [0, 3])
def test_input_audio_part_answers_as_transformers(post, draft):
    ref = {k: np.array(v) for k, v in mx.load(str(AUDIO / "reference.safetensors")).items()}
    status, out = post(body(CLIP.read_bytes(), draft=draft))
    assert status == 200, out
    assert out["usage"]["prompt_tokens"] == len(ref["prompt_ids"])
    b = load(target=AUDIO / "target", drafter=AUDIO / "assistant")  # what `generate --audio` gives
    b.tokenizer.eos_token_ids = []
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": audio_placeholders(b, 1) + PROMPT}])
    ids, media = attach_media(b, ids, [], [CLIP])
    plain = generate(b, ids, GenerationSettings(max_tokens=12, draft=0), media=media)
    assert plain.tokens == ref["greedy_ids"][:12].tolist()  # transformers' tokens
    assert out["choices"][0]["message"]["content"] == plain.text


@pytest.mark.parametrize(
    "data, fmt, message",
    [
        (b"not a wav at all", "wav", "not an audio file that can be read (Format not recognised"),
        (CLIP.read_bytes()[:5000], "wav", "truncated WAV file"),
        (CLIP.read_bytes(), "aac", 'must be one of "wav", "mp3", "flac", "ogg"'),
    ],
    ids=["not audio", "truncated", "aac"],
)
def test_bad_input_audio_is_one_400(post, data, fmt, message):
    status, out = post(body(data, fmt))
    assert status == 400 and message in out["error"]["message"] and "\n" not in out["error"]["message"], out


def test_responses_input_audio_part_gives_the_chat_answer(post):
    """OpenAI's Responses API: an `input_audio` part, as chat's, beside `input_text`."""
    data = base64.b64encode(CLIP.read_bytes()).decode()
    status, chat = post(body(CLIP.read_bytes(), draft=0))
    assert status == 200, chat
    content = [{"type": "input_audio", "input_audio": {"data": data, "format": "wav"}}]
    content.append({"type": "input_text", "text": PROMPT})
    request = {"input": [{"role": "user", "content": content}], "temperature": 0, "max_output_tokens": 12}
    status, out = post(request, "/v1/responses")
    assert status == 200, out
    text = "".join(c["text"] for item in out["output"] if item["type"] == "message" for c in item["content"])
    assert text == chat["choices"][0]["message"]["content"]
