"""`specdec serve`: an OpenAI-compatible HTTP server (starlette + uvicorn) over the speculative loop.

Routes: POST /v1/chat/completions, POST /v1/completions, POST /v1/messages (Anthropic's API,
messages.py), POST /v1/responses (responses.py), GET /v1/models[/{id}], GET /health.
The HTTP side (the asyncio event loop) validates and queues a `Job`; the prompt is rendered
(`prompt.chat_ids`, the one place the chat template is applied) and tokenised in a thread, off
the loop, so a huge prompt never stalls other streams; the worker thread (worker.py) runs every
mlx call, one generation at a time. Chat output goes through `gemma_format`
(thinking -> `reasoning_content`, tool calls -> `tool_calls`).

Invariants:
* Every error is OpenAI's JSON shape with its status (server_api.ApiError); never a traceback.
* A client that disconnects cancels its job (streaming or not); the worker stops before the
  next token and the cache is rewound.
* Bodies over `max_body` get 413 before they are read whole, bodies slower than `body_timeout`
  408; a full queue gets 429 + Retry-After (the measured time the queue needs, under 120 s).
* Only JSON bodies, only the Host names it listens on, no CORS unless asked (security.py).
* No request generates more than `settings.max_tokens` (`--max-tokens`), its default too.
* One log line per request: status, prompt/cached/completion tokens, tok/s, accepted/round.
* Images (data: URLs, or http(s) URLs fetched within limits unless `--no-fetch`) are decoded and
  placed with the prompt, off the loop, so a bad image or one too many for the context is a 400
  before anything is queued; the worker runs the vision tower (media.py, the path
  `generate --image` takes). Not yet under `mlx.launch` (a 400).
* Under `mlx.launch` with several processes: HTTP on rank 0 only; the other ranks load their part
  and run each request rank 0's worker shares with them (worker.follow) until it stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import queue
import signal
import socket
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ..decode import check_prompt
from ..errors import SpecdecError, UsageError
from ..media import image_placeholders
from ..media_audio import MediaPrompt, audio_placeholders, expand_media
from ..numerics import notes
from ..prompt import chat_ids, text_ids
from ..settings import GenerationSettings, SamplingParams
from . import messages, responses
from .api import ApiError, AudioInput, GenRequest, ImageInput, images_of, parse_chat, parse_completion
from .fetch import fetch_image
from .security import Guard, allowed_hosts
from .stream import Run, collect, stream_response
from .worker import Worker, follow

log = logging.getLogger("mlx_specdec.server")
MAX_BODY = 16 * 2**20
BODY_TIMEOUT = 30.0  # seconds a request body may take to arrive
MAX_RETRY_AFTER = 110  # the openai SDK does not retry past 120 s


def error_response(e: ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


async def _read_json(request: Request, limit: int, timeout: float = BODY_TIMEOUT) -> dict:
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise ApiError(413, f"the request body has {int(length)} bytes; the limit is {limit}")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise ApiError(413, f"the request body is over the limit of {limit} bytes")

    try:
        await asyncio.wait_for(read(), timeout)
    except TimeoutError:
        raise ApiError(
            408, f"the request body did not arrive within {timeout:g} s; send it whole", headers={"Connection": "close"}
        ) from None
    except ClientDisconnect:  # a client gone mid-body is a log line, like one gone mid-answer, not a traceback
        raise ApiError(499, "the client closed the connection before the whole request body arrived") from None
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ApiError(400, f"the request body is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return data


def _check_key(request: Request, key: str | None) -> None:
    if key is None or request.headers.get("x-api-key") == key:  # x-api-key: Anthropic's clients
        return
    if request.headers.get("authorization", "") != f"Bearer {key}":
        raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer KEY')", code="invalid_api_key")


def _place_images(bundle, req: GenRequest) -> tuple[list[ImageInput], list[AudioInput]]:
    """Each image (audio) part of the messages becomes the model's image (audio) placeholder in the
    text (as `generate --image` puts it); returns the images and the clips, each in that order."""
    images, clips = images_of(req.messages), images_of(req.messages, AudioInput)
    if images or clips:
        places = {ImageInput: image_placeholders(bundle, 1) if images else ""}
        places[AudioInput] = audio_placeholders(bundle, 1) if clips else ""
        for m in req.messages:
            if isinstance(m["content"], list):
                m["content"] = "".join(p if isinstance(p, str) else places[type(p)] for p in m["content"])
    return images, clips


def _image_bytes(state, image: ImageInput) -> bytes:
    if image.url is None:
        return image.data
    if not state.fetch:
        raise ApiError(
            400,
            f"'{image.where}' is an http(s) URL and this server was started with --no-fetch; "
            "send the image as a data: URL (data:image/png;base64,...)",
            param=image.where,
        )
    return fetch_image(image.url, image.where)


def _prompt_ids(state, req: GenRequest) -> tuple[list[int], MediaPrompt | None]:
    """The request's prompt ids, expanded for its images, and the images read and placed (renders,
    tokenises and decodes images, no mlx: call it off the event loop)."""
    bundle = state.worker.bundle
    tok = bundle.tokenizer
    param = "messages" if req.kind == "chat" else "prompt"
    pending = None
    try:
        if req.kind == "chat":
            images, clips = _place_images(bundle, req)
            ids = chat_ids(
                tok, req.messages, tools=req.tools if req.tool_choice != "none" else None, **req.template_kwargs
            )
            if req.forced_prefix:
                ids += [int(t) for t in tok.encode(req.forced_prefix, add_special_tokens=False)]
            if images or clips:
                data, where = [_image_bytes(state, i) for i in images], [i.where for i in images]
                ids, pending = expand_media(bundle, ids, data, [c.data for c in clips], where, [c.where for c in clips])
        else:
            ids = list(req.prompt) if isinstance(req.prompt, list) else text_ids(tok, req.prompt)
    except SpecdecError as e:
        raise ApiError(400, str(e), param=param) from None
    if len(ids) >= state.context_limit:
        soft = ""
        if pending:
            images, clips = pending.images, pending.audio
            count = sum(len(p.positions) for p in (images, clips) if p is not None)
            what = ([f"{len(images.patches)} image(s)"] if images is not None else []) + (
                [f"{len(clips.features)} clip(s)"] if clips is not None else []
            )
            soft = f" ({count} of them for {' and '.join(what)})"
        raise ApiError(
            400,
            f"the prompt has {len(ids)} tokens{soft} but the context holds {state.context_limit}; "
            "shorten it or raise --max-context",
            param=param,
            code="context_length_exceeded",
        )
    try:
        return check_prompt(bundle, ids, state.context_limit), pending  # in the vocabulary
    except SpecdecError as e:
        raise ApiError(400, str(e), param=param) from None


def retry_after(worker: Worker) -> int:
    """Seconds a refused client should wait: the measured time the queue needs, 1-110 s."""
    return max(1, min(MAX_RETRY_AFTER, round(worker.seconds_to_drain())))


def create_app(
    worker: Worker,
    *,
    settings: GenerationSettings | None = None,
    api_key: str | None = None,
    max_body: int = MAX_BODY,
    body_timeout: float = BODY_TIMEOUT,
    hosts: set[str] | None = None,
    cors_origin: str | None = None,
    fetch: bool = True,
) -> Starlette:
    """The ASGI app over a started worker (its bundle loaded).

    settings: the server's defaults for omitted fields (sampling, draft) and its limits
    (`max_tokens`: the default and the most a request may ask; `max_context`).
    hosts: the accepted `Host` headers (None: any); cors_origin: the one origin CORS allows.
    fetch: fetch http(s) image URLs (fetch.py); False refuses them (`--no-fetch`)."""
    settings = settings or GenerationSettings(sampling=SamplingParams(temp=1.0), max_tokens=4096)

    async def start(request: Request, parse) -> Run:
        """Check, parse, render off the loop and queue a request: its Run, or raises ApiError."""
        state = request.app.state
        _check_key(request, api_key)
        req = parse(await _read_json(request, max_body, body_timeout), state.model, state.defaults, state.draft)
        try:
            if worker.jobs.full():  # refuse before rendering a prompt that could not be queued
                raise queue.Full
            ids, images = await run_in_threadpool(_prompt_ids, state, req)
            run = Run(state, req, ids, request.url.path, images)
            worker.submit(run.job)
        except queue.Full:
            wait = retry_after(worker)
            raise ApiError(
                429,
                f"the queue is full ({worker.jobs.maxsize} waiting); retry in {wait} s",
                headers={"Retry-After": str(wait)},
            ) from None
        return run

    async def generate(request: Request, parse) -> object:
        t0 = time.perf_counter()
        try:
            run = await start(request, parse)
        except ApiError as e:  # refused before it was queued
            log.info("%s %d %s (%.0f ms)", request.url.path, e.status, e.message, (time.perf_counter() - t0) * 1e3)
            return error_response(e)
        if run.req.stream:
            return stream_response(run)
        try:
            return await collect(run, request)
        except ApiError as e:  # the generation failed or was cancelled; the run logged its line
            return error_response(e)

    async def other_api(request: Request, parse, respond, error) -> object:
        """A route in another wire format (Anthropic's Messages, OpenAI's Responses)."""
        t0 = time.perf_counter()
        try:
            run = await start(request, parse)
        except ApiError as e:
            log.info("%s %d %s (%.0f ms)", request.url.path, e.status, e.message, (time.perf_counter() - t0) * 1e3)
            return error(e)
        return await respond(run, request)

    async def anthropic_messages(request: Request):
        return await other_api(request, messages.parse_messages, messages.respond, messages.error_response)

    store = responses.ResponseStore()

    async def openai_responses(request: Request):
        return await other_api(
            request,
            lambda body, *a: responses.parse_responses(body, store, *a),
            lambda run, req: responses.respond(run, req, store),
            responses.error_response,
        )

    async def chat(request: Request):
        return await generate(request, parse_chat)

    async def completions(request: Request):
        return await generate(request, parse_completion)

    def model_json(state) -> dict:
        return {"id": state.model, "object": "model", "created": state.created, "owned_by": "mlx-specdec"}

    async def models(request: Request):
        try:
            _check_key(request, api_key)
        except ApiError as e:
            return error_response(e)
        return JSONResponse({"object": "list", "data": [model_json(request.app.state)]})

    async def model(request: Request):
        state = request.app.state
        try:
            _check_key(request, api_key)
            if request.path_params["model"] != state.model:
                raise ApiError(
                    404,
                    f"The model '{request.path_params['model']}' does not exist; this server serves '{state.model}'",
                    param="model",
                    code="model_not_found",
                )
        except ApiError as e:
            return error_response(e)
        return JSONResponse(model_json(state))

    async def health(request: Request):
        pool = worker.pool
        return JSONResponse(
            {
                "status": "ok",
                "model": request.app.state.model,
                "busy": worker.busy,
                "queued": worker.jobs.qsize(),
                "cache_entries": len(pool),
                "cache_bytes": pool.nbytes,
                "cache_limit_bytes": pool.max_bytes,
                "numerics": worker.bundle.numerics.to_json() if worker.bundle.numerics else None,
            }
        )

    async def http_error(request: Request, exc: HTTPException):
        message = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed here"}
        return error_response(ApiError(exc.status_code, message.get(exc.status_code, str(exc.detail))))

    async def server_error(request: Request, exc: Exception):
        log.exception("unexpected error on %s", request.url.path)
        return error_response(ApiError(500, "internal server error; see the server log"))

    app = Starlette(
        routes=[
            Route("/v1/chat/completions", chat, methods=["POST"]),
            Route("/v1/completions", completions, methods=["POST"]),
            Route("/v1/messages", anthropic_messages, methods=["POST"]),
            Route("/v1/responses", openai_responses, methods=["POST"]),
            Route("/v1/models", models, methods=["GET"]),
            Route("/v1/models/{model:path}", model, methods=["GET"]),
            Route("/health", health, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error, Exception: server_error},
        middleware=[Middleware(Guard, hosts=hosts)]
        + (
            [Middleware(CORSMiddleware, allow_origins=[cors_origin], allow_methods=["*"], allow_headers=["*"])]
            if cors_origin
            else []
        ),
    )
    bundle = worker.bundle
    app.state.worker, app.state.model, app.state.created = worker, bundle.name, int(time.time())
    app.state.settings, app.state.fetch = settings, fetch
    app.state.max_context = settings.max_context
    app.state.context_limit = settings.context_limit(bundle.target.config)
    app.state.defaults, app.state.draft = settings.sampling, settings.draft
    return app


def sampling_defaults(folders) -> SamplingParams:
    """The model's own sampling defaults (generation_config.json), else OpenAI's (temperature 1)."""
    for folder in folders:
        path = Path(folder) / "generation_config.json"
        if path.is_file():
            cfg = json.loads(path.read_text())
            return SamplingParams(
                temp=float(cfg.get("temperature", 1.0)) if cfg.get("do_sample", True) else 0.0,
                top_p=float(cfg.get("top_p", 1.0)),
                top_k=int(cfg.get("top_k", 0) or 0),
            )
    return SamplingParams(temp=1.0)


def serve(
    model=None,
    *,
    target=None,
    drafter=None,
    demo: bool = False,
    settings: GenerationSettings | None = None,
    host: str = "127.0.0.1",
    port: int = 8080,
    api_key: str | None = None,
    cache_bytes: int = 2**30,
    max_queue: int = 32,
    max_body: int = MAX_BODY,
    body_timeout: float = BODY_TIMEOUT,
    allowed_host: list[str] | tuple[str, ...] = (),
    cors_origin: str | None = None,
    fetch: bool = True,
    parallel: str = "tensor",
) -> None:
    """Load the model on the worker thread, then serve until interrupted (raises SpecdecError on bad input).
    Under `mlx.launch` with several processes the model is split as `parallel` says (distributed.py).

    settings: the defaults for what a request leaves out (draft length; sampling comes from the
    model's generation_config.json) and the limits: `max_tokens` caps every request, `max_context`."""
    import uvicorn

    from ..distributed import start
    from ..load import DEMO_DIR, load

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    settings = settings or GenerationSettings(max_tokens=4096)
    if cache_bytes < 0 or max_queue < 1:
        raise UsageError("--cache-bytes must be >= 0 and --max-queue >= 1")
    if not body_timeout > 0:
        raise UsageError(f"--body-timeout must be more than 0 seconds, not {body_timeout}")
    if not 0 <= port <= 65535:  # bind() would raise OverflowError, not OSError
        raise UsageError(f"--port must be 0-65535 (0: any free port), not {port}")
    run = start(parallel)  # several processes under mlx.launch; else nothing changes
    split = {"split": run.split} if run.size > 1 else {}

    def load_model():
        return load(model, target=target, drafter=drafter, demo=demo, **split)

    if run.rank != 0:  # HTTP on rank 0 only; this rank runs the requests rank 0 shares, in step
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # it stops when rank 0 says so (Ctrl-C there)
        follow(run, load_model, cache_bytes=cache_bytes)
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)  # connections wait in the backlog from now on, even before uvicorn runs
    except OSError as e:
        sock.close()
        raise SpecdecError(f"cannot listen on {host}:{port} ({e.strerror or e})") from None
    worker = Worker(load_model, max_queue=max_queue, cache_bytes=cache_bytes, spmd=run if run.size > 1 else None)
    worker.start_and_wait()
    folders = [f for f in (target, model and Path(model) / "target", model, demo and DEMO_DIR / "target") if f]
    bound = sock.getsockname()[1]
    app = create_app(
        worker,
        settings=dataclasses.replace(settings, sampling=sampling_defaults(folders)),
        api_key=api_key,
        max_body=max_body,
        body_timeout=body_timeout,
        hosts=None if "*" in allowed_host else allowed_hosts(host, bound, allowed_host),
        cors_origin=cors_origin,
        fetch=fetch,
    )
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        log.warning(
            "warning: listening on %s without --api-key: anyone who can reach this port can use the model", host
        )
    for line in notes(worker.bundle.numerics, settings.draft, settings.exactness) if worker.bundle.numerics else ():
        log.warning("%s", line)  # this device's pass widths do not all agree (probe.py)
    print(f"specdec serve: http://{host}:{bound}/v1 (model '{worker.bundle.name}')", flush=True)
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=2)
    try:
        uvicorn.Server(config).run(sockets=[sock])
    finally:
        worker.stop()
        if run.size > 1:  # let it finish its job and tell the other ranks to stop before exiting
            worker.join()
