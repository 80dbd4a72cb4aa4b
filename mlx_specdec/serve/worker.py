"""The generation side of `specdec serve`: one worker thread, a FIFO queue, a prompt-cache pool.

Invariants:
* Every mlx call (loading, prefill, rounds) runs on the worker thread: MLX is not thread-safe.
  The HTTP side only submits `Job`s and reads what each job's `emit` hands back.
* One generation at a time (batch 1), in arrival order; `submit` refuses when the queue is full.
* A cancelled job (its client went away) stops before its next token: the worker closes the
  generator, whose `finally` rewinds the cache to the tokens it holds, then the cache goes back
  to the pool. A job cancelled while queued never starts.
* `CachePool` keeps prompt caches between requests, least recently used first out, and never
  holds more than `max_bytes` of K/V while idle; a request takes the entry sharing the longest
  prefix with its prompt, so a growing conversation prefills only what is new.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..cache import common_prefix as _common_prefix
from ..errors import SpecdecError
from ..settings import GenerationSettings

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

    def cancel(self) -> None:
        self.cancelled.set()


class CachePool:
    """A bounded LRU of PromptCaches, keyed by the token prefix each one holds."""

    def __init__(self, make: Callable[[], object], max_bytes: int):
        self._make, self.max_bytes = make, max_bytes
        self._entries: list = []  # least recently used first

    @property
    def nbytes(self) -> int:
        return sum(pc.nbytes for pc in self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def take(self, ids: list[int]):
        """The entry sharing the longest prefix with `ids` (removed from the pool), or a new one.

        An entry is reused when it holds the whole prompt (a retry) or the shared prefix is more
        than half of what it holds: a new conversation then does not wipe out another one's
        cache for a few shared tokens (a system prompt)."""
        best, best_n = None, 0
        for pc in self._entries:
            n = _common_prefix(pc.tokens, ids[:-1])
            if n > best_n or (n == best_n and best is not None):  # ties: the most recently used
                best, best_n = pc, n
        if best is not None and (best_n * 2 > len(best.tokens) or best_n == len(ids) - 1):
            self._entries.remove(best)
            return best
        return self._make()

    def give_back(self, pc) -> None:
        """Return an entry as the most recently used; evict the oldest while over budget."""
        self._entries.append(pc)
        while self._entries and self.nbytes > self.max_bytes:
            self._entries.pop(0)


class Worker(threading.Thread):
    """Loads the bundle, then runs queued jobs one at a time; every mlx call happens here."""

    def __init__(self, load: Callable[[], object], *, max_queue: int = 32, cache_bytes: int = 2**30):
        super().__init__(name="specdec-worker", daemon=True)
        self._load = load
        self.jobs: queue.Queue = queue.Queue(maxsize=max_queue)
        self.cache_bytes = cache_bytes
        self.ready = threading.Event()
        self.error: str | None = None
        self.bundle = None
        self.pool: CachePool | None = None
        self.busy = False
        self.seconds_per_job = 1.0  # running mean, for Retry-After

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
        self.ready.set()
        if self.error is not None:
            return
        while (job := self.jobs.get()) is not None:
            if job.cancelled.is_set():
                job.emit(Failed(499, "cancelled by the client"))
                continue
            t0 = time.perf_counter()
            self.busy = True
            try:
                self._run(job)
            finally:
                self.busy = False
                self.seconds_per_job = 0.8 * self.seconds_per_job + 0.2 * (time.perf_counter() - t0)

    def _run(self, job: Job) -> None:
        from ..decode import stream_generate

        pc, keep, gen = self.pool.take(job.ids), True, None
        prefilled = None
        try:
            policy = self.policies.get(job.settings.draft, job.settings.battery)
            gen = stream_generate(self.bundle, job.ids, job.settings, prompt_cache=pc, policy=policy)
            for record in gen:
                if job.cancelled.is_set():
                    break  # the client went away: stop within this round
                prefilled = record.prompt_tokens
                job.emit(record)
            else:
                job.emit(Done(len(job.ids) - (prefilled if prefilled is not None else len(job.ids))))
                return
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
                self.pool.give_back(pc)
