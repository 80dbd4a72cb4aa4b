"""One model across several processes (several Macs), started by `mlx.launch`: the SPMD glue.

Every process runs the same program on its part of the target (`mode`: "tensor", a share of
every layer, models/shard.py; or "pipeline", a block of layers, models/pipeline.py): the same
prompt, the same loop, the same drafts, each all-reduce giving every process the same hidden
states. What must be agreed, and how:

* rank 0 owns input and output: its prompt ids and sampling seed are broadcast (an `all_sum` of
  an array that every other rank fills with zeros); without `--seed`, rank 0 draws one per
  request, so unseeded sampling gives the same tokens everywhere. Only rank 0 prints. A front end
  that reads input line by line (the piped chat) reads it on rank 0 only and hands every rank the
  same lines (`lines`), so every rank runs the same commands and turns in the same order; the
  server shares each request it runs (`share`: its prompt ids, settings, images and clips) and
  its shutdown, and the chat reads attached files on rank 0 only (`first`).
* the settings must be equal (they come from the same command line): a hash of them is gathered
  and compared once per request.
* the numerics probe (probe.py) is measured on every process (never read from one machine's
  cache) and agreed: exact only if every process says so at the same widths.
* auto's draft length: each process calibrates its round costs, the mean over ranks is
  all-reduced once, so every process has the same policy (it maximises tokens per second).
* each round's account (position, k, accepted, input and next token, drafts) is gathered in the
  round's one sync (decode.rounds' `agreement`); a process that read anything else turns into
  one SpecdecError on every process, instead of a hang or silently wrong output.

Collectives are issued in program order and ordered by data dependencies only, so the plain
rounds that the loop issues early run in the same order on every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import pickle
import secrets
from collections.abc import Iterable, Iterator, Sequence

import mlx.core as mx
import numpy as np

from . import probe
from .calibrate import calibrate
from .decode import stream_generate
from .draft_len import AutoPolicy, FixedPolicy
from .errors import SpecdecError
from .models.shard import split as model_split
from .round import IssuedRound
from .settings import MAX_DRAFT, GenerationSettings
from .stats import TokenRecord

DIVERGE_ENV = "MLX_SPECDEC_TEST_DIVERGE"  # test only: rank 1 samples with a seed off by one


class Spmd:
    """This process's place in a group of `size` > 1 processes sharing one model."""

    def __init__(self, group, mode: str):
        self.group, self.mode = group, mode
        self.rank, self.size = group.rank(), group.size()

    @property
    def split(self):
        """load.py's `split` hook: this process's part of the target."""
        return model_split(self.mode, self.group)

    # --- agreeing on values -----------------------------------------------------------------
    def broadcast(self, values: Sequence[int]) -> list[int]:
        """Rank 0's list of non-negative ints (< 2^64) on every rank; other ranks' values are ignored."""
        mine = list(values) if self.rank == 0 else []
        n = mx.distributed.all_sum(mx.array([len(mine)], dtype=mx.uint64), group=self.group).item()
        padded = mx.array(mine, dtype=mx.uint64) if self.rank == 0 else mx.zeros((n,), dtype=mx.uint64)
        return mx.distributed.all_sum(padded, group=self.group).tolist() if n else []

    def gather(self, row: Sequence[int]) -> list[list[int]]:
        """Every rank's `row` (ints, the same length on every rank), by rank."""
        return mx.distributed.all_gather(mx.array([list(row)], dtype=mx.int64), group=self.group).tolist()

    def agree_settings(self, settings: GenerationSettings) -> GenerationSettings:
        """Rank 0's seed (drawn there when none is set) in `settings`; every rank's settings equal."""
        seed = settings.sampling.seed
        seed = self.broadcast([secrets.randbits(63) if seed is None else seed])[0]
        settings = dataclasses.replace(settings, sampling=dataclasses.replace(settings.sampling, seed=seed))
        digest = int.from_bytes(hashlib.sha256(repr(settings).encode()).digest()[:7], "big")
        if len({r[0] for r in self.gather([digest])}) > 1:
            raise SpecdecError(
                "the processes were given different settings; start every one with the same command line"
            )
        if os.environ.get(DIVERGE_ENV) and self.rank == 1:  # a deliberately diverged rank (tests)
            settings = dataclasses.replace(settings, sampling=dataclasses.replace(settings.sampling, seed=seed ^ 1))
        return settings

    def agree_numerics(self, bundle) -> None:
        """Measure the numerics probe on every process and keep one verdict for all of them:
        rank 0's when they all agree, else plain decoding (the safe verdict)."""
        verdict = probe.measure(bundle)
        rows = self.gather([verdict.exact, verdict.plain_width, verdict.max_draft_tokens])
        if any(r != rows[0] for r in rows):
            verdict = dataclasses.replace(verdict, exact=False, plain_width=1, max_draft_tokens=0, agree=[])
        bundle.numerics = verdict

    def policy(self, bundle, settings: GenerationSettings):
        """The draft-length policy, the same on every rank: auto's costs are the mean over ranks."""
        if bundle.drafter is None or settings.draft != "auto":
            return FixedPolicy(0 if bundle.drafter is None else int(settings.draft))
        costs = mx.array(calibrate(bundle, MAX_DRAFT), dtype=mx.float32)
        return AutoPolicy((mx.distributed.all_sum(costs, group=self.group) / self.size).tolist())

    # --- the per-round check (decode.rounds' `agreement`) ----------------------------------
    def attach(self, issued: IssuedRound, bonus: mx.array, position: int) -> IssuedRound:
        """The round with every rank's account of it gathered, lazily: [size, MAX_DRAFT + 5]."""
        drafts = issued.drafts if issued.k else mx.zeros((0,), dtype=mx.int32)
        accepted = issued.accepted if issued.k else mx.array(0)
        row = mx.concatenate(
            [
                mx.array([position, issued.k]),
                mx.stack([accepted, bonus.reshape(()), issued.bonus.reshape(())]).astype(mx.int32),
                drafts.astype(mx.int32),
                mx.full((MAX_DRAFT - issued.k,), -1, dtype=mx.int32),
            ]
        ).astype(mx.int64)
        return dataclasses.replace(issued, check=mx.distributed.all_gather(row[None], group=self.group))

    def verify(self, issued: IssuedRound, position: int) -> None:
        """Raise SpecdecError (on every rank alike) unless every rank read the same round."""
        rows = issued.check.tolist()
        bad = [r for r in range(self.size) if rows[r] != rows[0]]
        if bad:

            def account(r):
                _, k, n, x, nxt, *drafts = rows[r]
                return f"rank {r}: k={k} accepted={n} token={x} next={nxt} drafts={drafts[:k]}"

            raise SpecdecError(
                f"the {self.size} processes diverged at position {position} ({account(0)}; {account(bad[0])}); "
                "run the same mlx-specdec, MLX and model files on every machine"
            )

    def share(self, value):
        """Rank 0's `value` (anything pickle takes) on every rank; other ranks' values are ignored.
        Only between the processes of one launch, all running this program: never from outside.
        The pickle travels 8 bytes to a word (an image's patches are megabytes)."""
        data = pickle.dumps(value) if self.rank == 0 else b""
        n = mx.distributed.all_sum(mx.array([len(data)], dtype=mx.uint64), group=self.group).item()
        words = -(-n // 8)
        mine = np.frombuffer(data.ljust(8 * words, b"\0"), dtype=np.uint64) if self.rank == 0 else None
        padded = mx.array(mine) if mine is not None else mx.zeros((words,), dtype=mx.uint64)
        got = np.array(mx.distributed.all_sum(padded, group=self.group), dtype=np.uint64)
        return pickle.loads(got.tobytes()[:n])

    def first(self, fn):
        """fn() as rank 0 computes it, on every rank: what reads the user's files (an image or a
        clip a user attaches is on rank 0's machine only). A SpecdecError there is raised on every
        rank, so every rank takes the same branch."""
        outcome = None
        if self.rank == 0:
            try:
                outcome = (True, fn())
            except SpecdecError as e:
                outcome = (False, str(e))
        ok, value = self.share(outcome)
        if not ok:
            raise SpecdecError(value)
        return value

    def lines(self, source: Iterable[bytes | str]) -> Iterator[bytes]:
        """Rank 0's lines of `source`, as it reads them, on every rank (other ranks never read
        theirs); ends on every rank when rank 0's input ends."""
        mine = iter(source) if self.rank == 0 else None
        while True:
            message = []
            if mine is not None:
                line = next(mine, None)
                if isinstance(line, str):
                    line = line.encode("utf-8", "surrogateescape")  # undecodable bytes stay as read
                message = [0] if line is None else [1, *line]  # 0: the end of the input
            got = self.broadcast(message)
            if got[0] == 0:
                return
            yield bytes(got[1:])

    # --- one request ----------------------------------------------------------------------
    def stream_generate(
        self, bundle, prompt_ids: Sequence[int], settings: GenerationSettings, **kwargs
    ) -> Iterator[TokenRecord]:
        """decode.stream_generate run in step on every rank, with rank 0's prompt and seed."""
        ids = self.broadcast(prompt_ids)
        settings = self.agree_settings(settings)
        if bundle.numerics is None:
            self.agree_numerics(bundle)
        policy = self.policy(bundle, settings)
        return stream_generate(bundle, ids, settings, policy=policy, agreement=self, **kwargs)


class Solo:
    """The only process: the whole model, decode.stream_generate as it is."""

    rank, size, split = 0, 1, None

    def lines(self, source):
        return source

    @staticmethod
    def first(fn):
        return fn()

    def stream_generate(self, bundle, prompt_ids, settings, **kwargs) -> Iterator[TokenRecord]:
        return stream_generate(bundle, prompt_ids, settings, **kwargs)


def start(mode: str = "tensor") -> Solo | Spmd:
    """Join the group `mlx.launch` started -> Spmd, or Solo when this is the only process (then
    nothing changes and nothing is paid). On ranks other than 0, stdout goes to the null device:
    rank 0 prints the output once."""
    model_split(mode, None)  # validates the mode in one process too
    group = mx.distributed.init()
    if group.size() == 1:
        return Solo()
    if group.rank() != 0:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.close(devnull)
    return Spmd(group, mode)
