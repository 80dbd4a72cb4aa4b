"""The generation side of `specdec serve`: one worker thread, a FIFO queue, a prompt-cache pool.

Invariants:
* Every mlx call (loading, prefill, rounds) runs on the worker thread: MLX is not thread-safe.
  The HTTP side only submits `Job`s and reads what each job's `emit` hands back.
* One generation at a time (batch 1), in arrival order; `submit` refuses when the queue is full.
* A cancelled job (its client went away) stops before its next token: the worker closes the
  generator, whose `finally` rewinds the cache to the tokens it holds, then the cache goes back
  to the pool. A job cancelled while queued never starts.
* `CachePool` (prompt_cache.py) keeps prompt caches between requests, matched by longest
  common prefix; after an answer the worker keeps the cache for the prefix the next turn's
  prompt will start with (`Job.next_turn`), so a growing conversation prefills only what is new.
* A job with images runs the vision tower here; its cache goes back cut before the first image,
  since placeholders look alike whatever the image (media.py).
* `tokens_per_s` and the queued jobs' token budgets give `Retry-After` (`seconds_to_drain`).
* Under `mlx.launch` with several processes (`spmd`, distributed.Spmd): rank 0's worker shares each
  job it starts (prompt ids, settings, snapshot, its images and clips as read and placed: every
  rank runs the towers on them) and then the ids its next turn keeps, and None
  to stop; the other ranks run the same jobs on the same pool in `follow`, so their caches, prefills
  and collectives stay in step. A job then runs to its end even when its client goes away: every
  rank must run the same rounds.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import SpecdecError
from ..settings import GenerationSettings
from .prompt_cache import CachePool

__all__ = ["CachePool", "Done", "Failed", "Job", "Worker"]

log = logging.getLogger("mlx_specdec.server")


@dataclass
class Done:
    """The last item of a job: how many prompt tokens came from the cache."""

    cached_tokens: int


@dataclass
class Failed:
    """The job failed: HTTP status and a one-line message (never a traceback)."""

    status: int
    message: str


@dataclass
class Job:
    """One generation. `emit(item)` is called on the worker thread with each TokenRecord, then
    exactly one Done or Failed; it must hand the item over to the HTTP side thread-safely."""

    ids: list[int]
    emit: Callable[[object], None]
    settings: GenerationSettings
    cancelled: threading.Event = field(default_factory=threading.Event)
    # the answer's text -> the ids the next turn's prompt starts with (chat), run on the worker
    next_turn: Callable[[str], list[int]] | None = None
    snapshot: bool = False  # keep a copy of the prompt's cache: the answer will not be in history
    images: object = None  # media.ImagePrompt: the prompt's images, read and placed, for the tower

    def cancel(self) -> None:
        self.cancelled.set()


class Worker(threading.Thread):
    """Loads the bundle, then runs queued jobs one at a time; every mlx call happens here."""

    def __init__(self, load: Callable[[], object], *, max_queue: int = 32, cache_bytes: int = 2**30, spmd=None):
        super().__init__(name="specdec-worker", daemon=True)
        self._load = load
        self.spmd = spmd  # distributed.Spmd under mlx.launch with several processes, else None
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.cache_bytes = cache_bytes
        self.ready = threading.Event()
        self.error: str | None = None
        self.bundle = None
        self.pool: CachePool | None = None
        self.busy = False
        self.tokens_per_s = 20.0  # running mean of generated tokens per second of a job, for Retry-After
        self.tokens_per_job = 256.0  # running mean of tokens generated per job
        self.current: Job | None = None

    def seconds_to_drain(self) -> float:
        """Seconds until the queue has room: the queued jobs' expected tokens at the measured rate."""
        jobs = list(self.jobs.queue) + ([self.current] if self.current is not None else [])
        tokens = sum(min(j.settings.max_tokens, self.tokens_per_job) for j in jobs if j is not None)
        return tokens / max(self.tokens_per_s, 1e-3)

    def start_and_wait(self) -> None:
        """Start the thread and wait for the bundle; raises SpecdecError if it cannot load."""
        self.start()
        self.ready.wait()
        if self.error is not None:
            raise SpecdecError(self.error)

    def submit(self, job: Job) -> None:
        """Queue a job; raises queue.Full when the queue is full."""
        self.jobs.put_nowait(job)

    def stop(self) -> None:
        try:
            self.jobs.put_nowait(None)
        except queue.Full:
            pass

    def run(self) -> None:
        self._setup()
        self.ready.set()
        if self.error is not None:
            return
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                job.emit(Failed(499, "cancelled by the client"))
                continue
            if self.spmd is not None:  # the other ranks run it too (follow)
                self.spmd.share((job.ids, job.settings, job.snapshot, job.images))
            t0 = time.perf_counter()
            self.busy, self.current = True, job
            try:
                generated = self._run(job)
            finally:
                self.busy, self.current = False, None
            if generated:
                rate = generated / max(time.perf_counter() - t0, 1e-3)
                self.tokens_per_s = 0.7 * self.tokens_per_s + 0.3 * rate
                self.tokens_per_job = 0.7 * self.tokens_per_job + 0.3 * generated
        if self.spmd is not None:
            self.spmd.share(None)  # the other ranks stop following

    def _setup(self) -> None:
        """Load the bundle (or set `error`), the cache pool, the policies and the numerics verdict."""
        from .. import probe
        from ..cache import PromptCache
        from ..calibrate import Policies

        try:
            self.bundle = self._load()
        except SpecdecError as e:
            self.error = str(e)
        except Exception as e:  # noqa: BLE001 - report why, on one line, to the command
            self.error = f"cannot load the model ({' '.join(str(e).split())[:200]})"
        if self.bundle is not None:
            self.pool = CachePool(lambda: PromptCache(self.bundle), self.cache_bytes)
            self.policies = Policies(self.bundle)  # auto calibrates once and learns across requests
            if self.spmd is not None:
                self.spmd.agree_numerics(self.bundle)  # measured on every process, one verdict for all
            probe.verdict(self.bundle)  # this device's pass widths, measured (or read) before the first request

    def _run(self, job: Job) -> int:
        """Run one job; returns how many tokens it generated."""
        from ..decode import stream_generate

        pc, keep, gen = self.pool.take(job.ids), True, None
        prefilled, snapshot, next_ids, text = None, None, None, []
        try:
            media = None if job.images is None else job.images.encode(self.bundle)  # the towers, on every rank
            if self.spmd is not None:  # in step with the other ranks (their draft-length policy too)
                gen = self.spmd.stream_generate(self.bundle, job.ids, job.settings, prompt_cache=pc, media=media)
            else:
                policy = self.policies.get(job.settings.draft, job.settings.battery)
                gen = stream_generate(self.bundle, job.ids, job.settings, prompt_cache=pc, policy=policy, media=media)
            for record in gen:
                if job.cancelled.is_set() and self.spmd is None:
                    break  # the client went away: stop within this round
                if prefilled is None and job.snapshot:
                    snapshot = pc.copy(len(job.ids))  # the prompt's cache, before the answer grows it
                prefilled = record.prompt_tokens
                text.append(record.text)
                job.emit(record)
            else:
                job.emit(Done(len(job.ids) - (prefilled if prefilled is not None else len(job.ids))))
                if job.next_turn is not None:  # after Done: the client has its answer meanwhile
                    next_ids = self._next_turn(job, "".join(text))
                if self.spmd is not None:  # rank 0's: only it has the conversation
                    next_ids = self.spmd.share(next_ids)
                return len(text)
            job.emit(Failed(499, "cancelled by the client"))
        except SpecdecError as e:
            job.emit(Failed(400, str(e)))
        except Exception:  # the server must keep serving; the log has the traceback
            log.exception("generation failed")
            keep = False  # do not reuse a cache that saw an unexpected failure
            job.emit(Failed(500, "internal error during generation; see the server log"))
        finally:
            if gen is not None:
                gen.close()  # its finally rewinds the cache to the tokens it holds
            if keep:
                if job.images is not None:  # image K/V is never reused: keep only what came before it
                    pc.truncate(min(len(pc.tokens), int(job.images.positions[0])))
                elif next_ids is not None:
                    pc = self.pool.keep_for(pc, next_ids, snapshot)
                self.pool.give_back(pc)
        return len(text)

    @staticmethod
    def _next_turn(job: Job, text: str) -> list[int] | None:
        try:
            return job.next_turn(text)
        except SpecdecError:  # the template cannot render it: keep the cache as generated
            return None


def follow(run, load: Callable[[], object], *, cache_bytes: int = 2**30) -> None:
    """A rank other than 0 under mlx.launch: load this rank's part, then run every job rank 0's
    worker shares, on a pool kept as rank 0 keeps its own, until rank 0 shares None."""
    worker = Worker(load, cache_bytes=cache_bytes, spmd=run)
    worker._setup()  # on this thread: there is no HTTP side here
    if worker.error is not None:
        raise SpecdecError(worker.error)
    while (shared := run.share(None)) is not None:
        ids, settings, snapshot, media = shared  # media: read and placed by rank 0, encoded here
        worker._run(Job(ids, lambda item: None, settings, next_turn=lambda text: None, snapshot=snapshot, images=media))
