"""Images through `specdec serve`: OpenAI `image_url` parts, Anthropic `image` blocks and Responses
`input_image` parts give what `generate --image` gives; bad images are one 400 each.

The app is the real one (serve.app.create_app) over a real worker on the tiny multimodal fixture
(tests/fixtures/media), in this process on a free loopback port; a 128-token context so that two
images (60 soft tokens each) do not fit.
"""

import base64
import http.client
import json
import re
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from PIL import Image

from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.media import attach_images, image_placeholders
from mlx_specdec.prompt import chat_ids
from mlx_specdec.serve.api import ApiError
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.paths import FIXTURES, TARGET

MEDIA = FIXTURES / "media"
IMAGE = MEDIA / "image.png"
PROMPT = "Describe it."
PNG64 = base64.b64encode(IMAGE.read_bytes()).decode()
URL = f"data:image/png;base64,{PNG64}"


@pytest.fixture(scope="module")
def server():
    """(post, bundle): post(path, body) -> (status, JSON) against the live app."""
    import uvicorn

    from mlx_specdec.serve.app import create_app
    from mlx_specdec.serve.worker import Worker

    worker = Worker(lambda: load(target=MEDIA / "target", drafter=MEDIA / "assistant"))
    worker.start_and_wait()
    settings = GenerationSettings(sampling=SamplingParams(temp=0.0), max_tokens=12, max_context=128, draft=3)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    app = create_app(worker, settings=settings)
    srv = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not srv.started:
        time.sleep(0.01)
    port = sock.getsockname()[1]

    def post(path, body):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        out = r.status, json.loads(r.read())
        conn.close()
        return out

    post.app = app
    yield post, worker.bundle
    srv.should_exit = True
    worker.stop()
    thread.join(5)


@pytest.fixture(scope="module")
def reference(server):
    """What `generate --image IMAGE --prompt PROMPT -m 12` gives (greedy, plain): its text and prompt length."""
    _, bundle = server
    b = load(target=MEDIA / "target", drafter=MEDIA / "assistant")
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": image_placeholders(b, 1) + PROMPT}])
    ids, media = attach_images(b, ids, [IMAGE])
    out = generate(b, ids, GenerationSettings(max_tokens=12, draft=0), media=media)
    return out.text, len(ids)


def chat_body(parts, draft=3):
    return {"messages": [{"role": "user", "content": parts}], "temperature": 0, "draft_tokens": draft}


IMAGE_THEN_TEXT = [{"type": "image_url", "image_url": {"url": URL}}, {"type": "text", "text": PROMPT}]


@pytest.mark.parametrize("draft", [0, 3])
def test_data_url_image_chat_equals_generate_with_the_image(server, reference, draft):
    post, _ = server
    status, body = post("/v1/chat/completions", chat_body(IMAGE_THEN_TEXT, draft))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == reference[0]
    assert body["usage"]["prompt_tokens"] == reference[1]


def test_a_second_image_of_the_same_size_is_not_answered_from_the_first_ones_cache(server, tmp_path):
    post, bundle = server
    flipped = tmp_path / "flipped.png"
    Image.open(IMAGE).transpose(Image.FLIP_LEFT_RIGHT).save(flipped)
    url = "data:image/png;base64," + base64.b64encode(flipped.read_bytes()).decode()
    post("/v1/chat/completions", chat_body(IMAGE_THEN_TEXT))
    parts = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}]
    status, body = post("/v1/chat/completions", chat_body(parts))
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": image_placeholders(bundle, 1) + PROMPT}])
    b = load(target=MEDIA / "target", drafter=MEDIA / "assistant")
    ids, media = attach_images(b, ids, [flipped])
    fresh = generate(b, ids, GenerationSettings(max_tokens=12, draft=0), media=media)
    assert status == 200 and body["choices"][0]["message"]["content"] == fresh.text
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] <= int(media.positions[0])


def test_anthropic_image_block_equals_generate_with_the_image(server, reference):
    post, _ = server
    source = {"type": "base64", "media_type": "image/png", "data": PNG64}
    content = [{"type": "image", "source": source}, {"type": "text", "text": PROMPT}]
    status, body = post(
        "/v1/messages", {"max_tokens": 12, "temperature": 0, "messages": [{"role": "user", "content": content}]}
    )
    assert status == 200, body
    assert "".join(b["text"] for b in body["content"] if b["type"] == "text") == reference[0]
    usage = body["usage"]
    assert usage["input_tokens"] + usage["cache_read_input_tokens"] == reference[1]


def test_responses_input_image_equals_generate_with_the_image(server, reference):
    post, _ = server
    content = [{"type": "input_image", "image_url": URL}, {"type": "input_text", "text": PROMPT}]
    status, body = post("/v1/responses", {"temperature": 0, "input": [{"role": "user", "content": content}]})
    assert status == 200, body
    assert body["output"][-1]["content"][0]["text"] == reference[0]


def _png(width, height) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _data(raw: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(raw).decode()


@pytest.mark.parametrize(
    "urls, message",
    [
        ([_data(b"hello, not a picture")], r"content\[0\]\.image_url: not an image Pillow can read"),
        ([_data(IMAGE.read_bytes()[:300])], r"content\[0\]\.image_url: cannot decode the image, truncated"),
        ([_data(_png(0, 5))], r"content\[0\]\.image_url: (the image has 0 pixels|not an image)"),
        ([URL, URL], r"144 tokens \(120 of them for 2 image\(s\)\) but the context holds 128"),
        (["data:image/png;base64,@@@"], "is not valid base64"),
        (["file:///etc/passwd"], "must be a data: URL .* or http\\(s\\), not a file URL"),
    ],
    ids=["not-an-image", "truncated", "zero-pixels", "too-many-for-the-context", "bad-base64", "file"],
)
def test_bad_image_is_one_400_line(server, urls, message):
    post, _ = server
    parts = [{"type": "image_url", "image_url": {"url": u}} for u in urls] + [{"type": "text", "text": PROMPT}]
    status, body = post("/v1/chat/completions", chat_body(parts))
    assert status == 400, body
    assert "\n" not in body["error"]["message"]
    assert re.search(message, body["error"]["message"]), body["error"]["message"]


def test_image_to_a_model_without_a_vision_tower_is_a_400():
    from mlx_specdec.serve.api import parse_chat
    from mlx_specdec.serve.app import _prompt_ids

    bundle = load(target=TARGET)
    state = SimpleNamespace(worker=SimpleNamespace(bundle=bundle), context_limit=4096)
    req = parse_chat(chat_body(IMAGE_THEN_TEXT), bundle.name)
    with pytest.raises(ApiError, match="has no vision tower") as e:
        _prompt_ids(state, req)
    assert e.value.status == 400
    with pytest.raises(SpecdecError):
        image_placeholders(bundle, 1)


@pytest.fixture(scope="module")
def image_host():
    """An HTTP server on loopback: /image.png, /slow.png (answers after 1 s), /missing.png (404),
    /to-file.png (a redirect to a file: URL)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/missing.png":
                self.send_error(404)
                return
            if self.path == "/to-file.png":
                self.send_response(302)
                self.send_header("Location", "file:///etc/passwd")
                self.end_headers()
                return
            if self.path == "/slow.png":
                time.sleep(1)
            data = IMAGE.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    host = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{host.server_address[1]}"
    host.shutdown()


def url_body(url):
    return chat_body([{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": PROMPT}])


def test_http_image_url_is_fetched_and_answers_as_generate_with_the_image(server, reference, image_host):
    post, _ = server
    status, body = post("/v1/chat/completions", url_body(f"{image_host}/image.png"))
    assert status == 200, body
    assert body["choices"][0]["message"]["content"] == reference[0]


def test_fetch_limits_are_one_400_line_each(server, image_host, monkeypatch):
    import mlx_specdec.serve.fetch as fetch

    post, _ = server
    monkeypatch.setattr(fetch, "MAX_IMAGE_BYTES", 100)
    monkeypatch.setattr(fetch, "FETCH_TIMEOUT", 0.3)
    for path, why in [
        ("/image.png", r"\(\d+ bytes; the limit is 100\)"),
        ("/slow.png", r"timed out|within 0.3 s"),
        ("/missing.png", r"\(HTTP 404\)"),
        ("/to-file.png", r"redirected to a URL that is not http\(s\)\)"),
    ]:
        status, body = post("/v1/chat/completions", url_body(f"{image_host}{path}"))
        message = body["error"]["message"]
        assert status == 400 and "\n" not in message and re.search(f"cannot fetch .*{why}", message), message


def test_no_fetch_refuses_http_image_urls_and_says_to_send_a_data_url(server, image_host, monkeypatch):
    post, _ = server
    monkeypatch.setattr(post.app.state, "fetch", False)
    status, body = post("/v1/chat/completions", url_body(f"{image_host}/image.png"))
    assert status == 400
    assert "started with --no-fetch; send the image as a data: URL" in body["error"]["message"]
