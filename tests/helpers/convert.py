"""The converter on the fixture pair, logits to compare bundles by, and a faked Hugging Face hub
(`FakeHub` replaces the `snapshot_download` that `weights_convert.fetch` calls)."""

import hashlib
import shutil
from types import SimpleNamespace

import mlx.core as mx
from huggingface_hub.errors import RepositoryNotFoundError

import weights_convert
from weights_convert import fetch

from .paths import DRAFTERS, TARGET

PROMPT = [2, 5, 432, 424, 274, 19, 431, 423, 6, 19, 5, 435, 401, 428, 19, 40, 77, 301, 12, 99]


def convert(out, target=TARGET, drafter=DRAFTERS["centroid"], **kw):
    return weights_convert.convert(str(target), str(drafter), out, **kw)


def logits(model, ids=PROMPT):
    """[L, V] float32 logits of an mlx-lm style model (callable on [1, L] ids)."""
    return model(mx.array([ids]))[0].astype(mx.float32)


def copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def http_error(cls, status):
    request = fetch.httpx.Request("GET", "https://huggingface.co/api/models/x")
    return cls(f"{status} error", response=fetch.httpx.Response(status, request=request))


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download: serves folders as repos, into a cache."""

    def __init__(self, root, repos, fail_download=None):
        self.cache, self.repos, self.fail_download = root / "hub", repos, fail_download
        self.calls = []

    def __call__(self, repo_id, *, revision=None, allow_patterns=None, dry_run=False, local_files_only=False):
        self.calls.append((repo_id, revision, tuple(allow_patterns or ()), dry_run))
        if isinstance(self.repos.get(repo_id), Exception):
            raise self.repos[repo_id]
        if repo_id not in self.repos:
            raise http_error(RepositoryNotFoundError, 404)
        commit = (
            revision if revision and len(revision) == 40 else hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
        )
        snap = self.cache / repo_id.replace("/", "--") / "snapshots" / commit
        files = [p for p in sorted(self.repos[repo_id].iterdir()) if fetch._matches(p.name, list(allow_patterns))]
        if dry_run:
            return [
                SimpleNamespace(filename=p.name, file_size=p.stat().st_size, will_download=not (snap / p.name).exists())
                for p in files
            ]
        snap.mkdir(parents=True, exist_ok=True)
        for p in files:
            if p.suffix == ".safetensors" and self.fail_download == repo_id:
                (snap / p.name).write_bytes(p.read_bytes()[:1000])  # a partial file, as a dropped connection leaves
                raise fetch.httpx.ReadTimeout("The read operation timed out")
            shutil.copyfile(p, snap / p.name)
        return str(snap)
