"""Find a checkpoint: a local folder, or a Hugging Face Hub repo fetched into the hub's cache.

Invariants:
- Only the files a conversion reads are fetched (`NEEDED`), through `huggingface_hub`, so its
  cache, its progress bars, its resume-after-interruption and its `HF_TOKEN` handling apply.
  We never pass, print or write the token ourselves.
- Weights are read from safetensors only. A checkpoint with only pickle weights is refused
  before anything is downloaded: unpickling runs arbitrary code.
- Every failure is a `SpecdecError` with one line naming the source and what to do.
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants as hub_constants
from huggingface_hub import errors as hub_errors
from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    DryRunError,
    GatedRepoError,
    HFValidationError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from mlx_specdec.errors import SpecdecError
from mlx_specdec.files import PICKLE_SUFFIXES, user_path, weight_files
from mlx_specdec.media import PROCESSOR_FILES

try:  # the HTTP client huggingface-hub uses: httpx2 from 2.x, httpx before
    import httpx2 as httpx
except ImportError:  # pragma: no cover
    import httpx
# A network or disk failure in the middle of a download.
DOWNLOAD_ERRORS = (OSError, httpx.HTTPError) + tuple(
    getattr(hub_errors, name) for name in ("XetDownloadError",) if hasattr(hub_errors, name)
)

# Small files: read before any weight is downloaded, to check the pair.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "special_tokens_map.json",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)
METADATA = [
    "config.json",
    "generation_config.json",
    "model.safetensors.index.json",
    *TOKENIZER_FILES,
    *PROCESSOR_FILES,
]
WEIGHTS = ["*.safetensors"]
NEEDED = METADATA + WEIGHTS
# Listed (never downloaded) only to explain why a checkpoint without safetensors is refused.
PICKLE = [f"*{suffix}" for suffix in PICKLE_SUFFIXES]


@dataclass(frozen=True)
class Source:
    """Where a checkpoint comes from and where its files are on this machine.

    `revision` is the resolved commit hash for a hub repo, None for a local folder.
    `folder` holds the metadata files at first; `fetch_weights` fills in the weights.
    """

    spec: str
    repo: str | None
    revision: str | None
    folder: Path
    # (filename, bytes, still to download) of each safetensors file.
    files: tuple[tuple[str, int, bool], ...] = ()

    @property
    def download_bytes(self) -> int:
        return sum(size for _, size, pending in self.files if pending)


def resolve(spec: str, revision: str | None, role: str) -> Source:
    """Locate `spec` (a folder, `owner/name` or `owner/name@revision`) and fetch its metadata.

    Lists its weight files (and their sizes) without downloading them; refuses pickle-only
    checkpoints. `role` ("target" or "drafter") names the source in messages.
    """
    folder = user_path(spec, f"--{role}")
    if folder.is_dir():
        if revision is not None:
            raise SpecdecError(f"--{role}-revision applies to hub repos, but {spec} is a local folder")
        return _local(spec, folder)
    if folder.exists():
        raise SpecdecError(f"{role} {spec} is a file; pass a checkpoint folder or a hub repo id")
    repo, at, pinned = spec.partition("@")
    if at:
        if revision is not None and revision != pinned:
            raise SpecdecError(f"{spec} names revision {pinned!r} but --{role}-revision says {revision!r}")
        revision = pinned or None
    try:
        validate_repo_id(repo)
        looks_like_repo = repo.count("/") <= 1 and not spec.startswith((".", "~", os.sep))
    except HFValidationError:
        looks_like_repo = False
    if not looks_like_repo:
        raise SpecdecError(f"{role} {spec} is neither an existing folder nor a hub repo id (owner/name)")
    return _hub(spec, repo, revision)


def fetch_weights(source: Source) -> Source:
    """Download the safetensors of a hub source into the hub cache (resuming any partial download)."""
    if source.repo is None:
        return source
    folder = _snapshot(source.repo, source.revision, NEEDED)
    weight_files(folder)  # every shard complete
    return Source(
        source.spec, source.repo, source.revision, folder, tuple((name, size, False) for name, size, _ in source.files)
    )


def _local(spec: str, folder: Path) -> Source:
    files = weight_files(folder)  # refuses pickle-only and truncated checkpoints
    rel = tuple((p.name, p.stat().st_size, False) for p in files)
    return Source(spec, None, None, folder.resolve(), rel)


def _hub(spec: str, repo: str, revision: str | None) -> Source:
    # 1. metadata: small, resolves the revision to a commit (the snapshot folder's name)
    folder = _snapshot(repo, revision, METADATA)
    commit = folder.name
    # 2. list the weights at that commit without downloading them (sizes for the disk check)
    listing = None
    with _hub_errors(repo, commit):
        try:
            listing = snapshot_download(repo, revision=commit, allow_patterns=WEIGHTS + PICKLE, dry_run=True)
        except (DryRunError, LocalEntryNotFoundError) as error:
            if _http_status(error) is not None:  # the Hub answered, with an error: say which
                raise
    if listing is not None:
        files = [(f.filename, f.file_size or 0, f.will_download) for f in listing]
    else:
        # Offline with the repo cached: the cached snapshot is all we can use.
        folder = _snapshot(repo, commit, NEEDED, local_files_only=True)
        files = [(str(p.relative_to(folder)), p.stat().st_size, False) for p in folder.rglob("*") if p.is_file()]
    weights = tuple(sorted(f for f in files if _matches(f[0], WEIGHTS)))
    if not weights:
        _refuse_pickle(repo, [name for name, _, _ in files])
    return Source(spec, repo, commit, folder, weights)


def _snapshot(repo: str, revision: str | None, patterns: list[str], local_files_only: bool = False) -> Path:
    """`snapshot_download` with its errors turned into one-line `SpecdecError`s."""
    with _hub_errors(repo, revision):
        return Path(
            snapshot_download(repo, revision=revision, allow_patterns=patterns, local_files_only=local_files_only)
        )


@contextmanager
def _hub_errors(repo: str, revision: str | None) -> Iterator[None]:
    """Turn the errors of a `snapshot_download` call into one-line `SpecdecError`s."""
    try:
        yield
    except GatedRepoError:
        raise SpecdecError(
            f"{repo} is gated: accept its licence on https://huggingface.co/{repo}, then log in with "
            "`hf auth login` (or set HF_TOKEN)"
        ) from None
    except RevisionNotFoundError:
        raise SpecdecError(f"{repo} has no revision {revision!r}") from None
    except RepositoryNotFoundError:
        raise SpecdecError(
            f"no repo {repo} on the Hugging Face Hub (if it is private, log in with `hf auth login`); "
            "for a checkpoint on disk pass its folder"
        ) from None
    except json.JSONDecodeError:  # a proxy's or captive portal's page instead of the Hub's API
        raise SpecdecError(
            f"the Hugging Face Hub at {hub_constants.ENDPOINT} answered with something that is not JSON "
            f"for {repo}; check HF_ENDPOINT and your network connection, then try again"
        ) from None
    except (LocalEntryNotFoundError, *DOWNLOAD_ERRORS) as error:
        raise SpecdecError(_hub_failure(repo, error)) from None


def _hub_failure(repo: str, error: Exception) -> str:
    """The line for a failed hub request: what the Hub answered (if it did), else the network."""
    status = _http_status(error)
    if status in (401, 403):
        return (
            f"the Hugging Face Hub refused {repo} (HTTP {status}): authentication failed; "
            "check HF_TOKEN or log in again with `hf auth login`"
        )
    if status == 429:
        return f"the Hugging Face Hub is limiting requests (HTTP 429) for {repo}; wait a few minutes and try again"
    if status is not None and status >= 500:
        return f"the Hugging Face Hub answered HTTP {status} (a server error) for {repo}; try again later"
    if isinstance(error, LocalEntryNotFoundError):
        return (
            f"cannot reach the Hugging Face Hub for {repo} and it is not in the local cache; "
            "connect to the internet, or pass a local folder holding the checkpoint"
        )
    reason = _scrub(str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__)
    return f"downloading {repo} failed ({reason}); run the same command again to resume"


def _http_status(error: BaseException | None) -> int | None:
    """The HTTP status behind `error` or the errors it was raised from (the hub wraps them)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        response = getattr(error, "response", None)
        status = getattr(response, "status_code", None)
        if isinstance(status, int):
            return status
        error = error.__cause__ or error.__context__
    return None


def _refuse_pickle(repo: str, names: list[str]) -> None:
    """The hub counterpart of `load.weight_files`' check, made before anything is downloaded."""
    pickled = sorted(n for n in names if _matches(n, PICKLE))
    if pickled:
        raise SpecdecError(
            f"{repo}/{pickled[0]}: pickle weights are refused (unpickling can run arbitrary code); "
            "use a safetensors checkpoint"
        )
    raise SpecdecError(f"{repo}: no .safetensors weights found")


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatch(name, p) for p in patterns)


def _scrub(text: str) -> str:
    """Hide the hub token should a library ever echo it back in an error."""
    token = os.environ.get("HF_TOKEN")
    return text.replace(token, "***") if token else text
