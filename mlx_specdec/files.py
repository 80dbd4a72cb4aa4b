"""Reading model files without trusting them: every reader either returns checked data or raises
a one-line `SpecdecError` naming the file, what is wrong with it and what to do.

Invariants:
- A JSON file the code indexes into is an object (`read_json`); config keys that hold sizes,
  counts or floats hold numbers (`read_config`), so a bad file never reaches a model constructor.
- A safetensors file is checked (header shape, offsets, size) before mlx opens it, and mlx is
  never given a path that is not UTF-8 (it cannot open one: `std::bad_cast`).
- Paths are printed with `shown`: undecodable bytes appear as `\\xNN`, never as a crash.
- A path the user typed goes through `user_path` (a NUL byte, an unknown `~user`, a name longer
  than the file system allows are one line), and a file is opened only once `check_regular` has
  seen a regular file there (a FIFO would block the open forever; a folder, a dangling link or a
  loop of links would fail deep inside a reader).
- A file written for the user (`write_atomically`) is whole or absent: a temporary file beside it,
  then a rename, so a full disk or a crash leaves the old file as it was.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import mlx.core as mx

from .errors import SpecdecError, UsageError

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
NAME_MAX = 255  # bytes in one file name, where the file system does not say (ext4, APFS, tmpfs)
PathLike = str | Path

# --- files -------------------------------------------------------------------------------
# config.json keys that must hold numbers wherever they appear (top level, text_config, ...);
# null is accepted (Hugging Face writes it for "not used"). Anything else would reach the model
# constructors and fail there with a traceback.
COUNT_KEYS = frozenset(
    {
        "vocab_size",
        "vocab_size_per_layer_input",
        "hidden_size",
        "hidden_size_per_layer_input",
        "intermediate_size",
        "moe_intermediate_size",
        "num_hidden_layers",
        "num_attention_heads",
        "num_key_value_heads",
        "num_global_key_value_heads",
        "head_dim",
        "global_head_dim",
        "num_kv_shared_layers",
        "max_position_embeddings",
        "sliding_window",
        "num_experts",
        "top_k_experts",
        "backbone_hidden_size",
        "num_centroids",
        "centroid_intermediate_top_k",
        "group_size",
        "bits",
    }
)
REAL_KEYS = frozenset({"rms_norm_eps", "rope_theta", "partial_rotary_factor", "final_logit_softcapping"})
OBJECT_KEYS = frozenset({"text_config", "rope_parameters", "per_layer_config"})
# Bytes per element of the safetensors dtypes (others, if any, are left to mlx to judge).
DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "U16": 2,
    "I16": 2,
    "F16": 2,
    "BF16": 2,
    "U32": 4,
    "I32": 4,
    "F32": 4,
    "U64": 8,
    "I64": 8,
    "F64": 8,
}


def cache_dir() -> Path:
    """The folder for converted bundles and measured verdicts: MLX_SPECDEC_CACHE, else
    $XDG_CACHE_HOME/mlx-specdec, else ~/.cache/mlx-specdec."""
    root = os.environ.get("MLX_SPECDEC_CACHE")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "mlx-specdec"


def shown(path: PathLike) -> str:
    """`path` as it can be printed: bytes that are not UTF-8 appear as \\xNN escapes."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def as_path(value, option: str) -> Path | None:
    """A folder argument as the API receives it -> a Path (None stays None); bytes are decoded the
    way the OS does. An empty name or a value that is no path at all is one line naming `option`."""
    if value is None:
        return None
    if isinstance(value, bytes):
        value = os.fsdecode(value)
    if not isinstance(value, (str, os.PathLike)):
        raise SpecdecError(f"{option} must be a folder path, not {type(value).__name__} {value!r}")
    if str(value) == "":
        raise SpecdecError(f"{option} is an empty path; give a model folder")
    return user_path(value, option)


def user_path(value: PathLike, option: str) -> Path:
    """A path the user typed -> a Path with `~` expanded; a UsageError naming `option` when it cannot
    name a file here: a NUL byte, a `~user` with no such user, a name longer than the file system's limit."""
    text = os.fsdecode(value) if isinstance(value, bytes) else os.fspath(value)
    if "\0" in text:
        printable = shown(text.replace("\0", "\\0"))
        raise UsageError(f"{option} {printable}: a path cannot hold a NUL byte; retype it")
    if text.startswith("~"):
        expanded = os.path.expanduser(text)
        if expanded.startswith("~"):  # unchanged: no such user (or no home folder at all)
            user = text[1:].split(os.sep, 1)[0]
            who = f"no user {user!r} on this machine" if user else "no home folder (HOME is not set)"
            head = text.split(os.sep, 1)[0]
            raise UsageError(f"{option} {shown(text)}: there is {who}, so {head} cannot be expanded; give a full path")
        text = expanded
    path = Path(text)
    limit = _name_max(path)
    for part in path.parts:
        if len(os.fsencode(part)) > limit:
            raise UsageError(
                f"{option}: the name '{shown(part)[:24]}...' is {len(os.fsencode(part))} bytes long, more than the "
                f"{limit} this file system allows; choose a shorter name"
            )
    return path


def _name_max(path: Path) -> int:
    folder = path.absolute()
    while not os.path.isdir(folder) and folder != folder.parent:  # isdir: False for a name too long
        folder = folder.parent
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return NAME_MAX


def check_regular(path: Path, fix: str) -> None:
    """Refuse, before anything opens it, a `path` that is not a regular file (or a link to one):
    one line saying what is there instead, then `fix`."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.islink(path):
            raise SpecdecError(
                f"{shown(path)}: a symbolic link to {shown(os.readlink(path))}, which does not exist; {fix}"
            ) from None
        raise SpecdecError(f"{shown(path)}: no such file; {fix}") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise SpecdecError(f"{shown(path)}: a loop of symbolic links, not a file; {fix}") from None
        raise SpecdecError(f"{shown(path)}: cannot read ({e.strerror or e}); {fix}") from None
    if not stat.S_ISREG(mode):
        raise SpecdecError(f"{shown(path)}: {_kind(mode)}, not a regular file; {fix}")


def _kind(mode: int) -> str:
    kinds = [
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ]
    return next((name for test, name in kinds if test(mode)), "a special file")


def check_path(path: Path, fix: str = "rename it") -> None:
    """mlx opens files by UTF-8 name: refuse a path that has none (`std::bad_cast` otherwise)."""
    if not _is_utf8(str(path)):
        bad = next(p for p in Path(path).parts if not _is_utf8(p))
        raise SpecdecError(f"{shown(path)}: the name '{shown(bad)}' is not valid UTF-8, which mlx cannot open; {fix}")


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def read_json(path: Path) -> dict:
    """The JSON object in `path`; SpecdecError naming the file when it is not one."""
    check_regular(path, "fix or re-download it")
    try:
        value = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpecdecError(f"{shown(path)}: not valid JSON ({e}); fix or re-download it") from None
    except RecursionError:
        raise SpecdecError(f"{shown(path)}: JSON nested too deeply to read; fix or re-download it") from None
    if not isinstance(value, dict):
        raise SpecdecError(f"{shown(path)}: expected a JSON object, found {_json_kind(value)}; fix or re-download it")
    return value


def _json_kind(value) -> str:
    kinds = {list: "a list", dict: "an object", str: "a string", bool: "true/false", type(None): "null"}
    return kinds.get(type(value), "a number")


def read_config(folder: Path) -> dict:
    """`folder/config.json` as a dict whose size, count and float keys hold numbers."""
    path = folder / "config.json"
    check_path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: is a file, not a model folder; pass the folder that holds config.json")
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    if not os.path.lexists(path):
        raise SpecdecError(f"{path}: missing; expected a Hugging Face or converted model folder")
    return read_config_file(path)


def read_config_file(path: Path) -> dict:
    """A config JSON file (any name) as a dict whose size, count and float keys hold numbers."""
    config = read_json(path)
    _check_types(config, path, "")
    return config


def _check_types(node: dict, path: Path, where: str) -> None:
    for key, value in node.items():
        name, got = f"{where}{key}", _brief(value)
        if value is None:
            continue
        if key in COUNT_KEYS and not _whole(value):
            raise SpecdecError(f"{path}: {name} must be a whole number >= 0, not {got}; fix or re-download it")
        real = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if key in REAL_KEYS and not real:
            raise SpecdecError(f"{path}: {name} must be a number, not {got}; fix or re-download it")
        if key in OBJECT_KEYS and not isinstance(value, dict):
            raise SpecdecError(f"{path}: {name} must be a JSON object, not {got}; fix or re-download it")
        if key == "layer_types" and not (isinstance(value, list) and all(isinstance(t, str) for t in value)):
            raise SpecdecError(f"{path}: {name} must be a list of layer names, not {got}; fix or re-download it")
        if isinstance(value, dict):
            _check_types(value, path, f"{name}.")


def _brief(value) -> str:
    """A JSON value as a message shows it: short scalars as they are, anything else by kind."""
    if isinstance(value, (str, int, float)) and len(repr(value)) <= 40:
        return json.dumps(value)
    return _json_kind(value)


def safetensors_header(path: Path) -> tuple[dict, int]:
    """(the parsed header of a safetensors file, its length in bytes); SpecdecError if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > path.stat().st_size - 8:
                raise ValueError
            return json.loads(f.read(n)), n
    except (struct.error, ValueError, UnicodeDecodeError):
        raise SpecdecError(f"{path}: not a readable safetensors file (truncated or corrupt); re-download it") from None


def check_safetensors(path: Path) -> None:
    """Raise if `path` is not a complete safetensors file (header and data all present)."""
    check_regular(path, "re-download or re-convert it")
    size = path.stat().st_size
    header, n = safetensors_header(path)
    bad = _bad_header(header)
    if bad:
        raise SpecdecError(f"{shown(path)}: corrupt safetensors header ({bad}); re-download or re-convert it")
    end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end > size:
        raise SpecdecError(
            f"{path}: truncated ({size} bytes, header needs {8 + n + end}); re-download or re-convert it"
        )


def _bad_header(header) -> str | None:
    """What is wrong with a parsed safetensors header, or None (the format's required fields only)."""
    if not isinstance(header, dict):
        return f"{_json_kind(header)}, not an object"
    for key, entry in header.items():
        if key == "__metadata__":
            if not (entry is None or isinstance(entry, dict) and all(isinstance(v, str) for v in entry.values())):
                return "__metadata__ is not a map of strings"
            continue
        if not isinstance(entry, dict):
            return f"tensor {key!r} is not an object"
        offsets, shape, dtype = entry.get("data_offsets"), entry.get("shape"), entry.get("dtype")
        if not (
            isinstance(offsets, list)
            and len(offsets) == 2
            and all(_whole(o) for o in offsets)
            and offsets[0] <= offsets[1]
        ):
            return f"tensor {key!r} has no valid data_offsets"
        if not (isinstance(shape, list) and all(_whole(d) for d in shape)) or not isinstance(dtype, str):
            return f"tensor {key!r} has no valid dtype and shape"
        if dtype in DTYPE_BYTES and offsets[1] - offsets[0] != math.prod(shape) * DTYPE_BYTES[dtype]:
            return (
                f"tensor {key!r} spans {offsets[1] - offsets[0]} bytes, its {dtype} {shape} needs "
                f"{math.prod(shape) * DTYPE_BYTES[dtype]}"
            )
    return None


def _whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def weight_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder; refuses pickle-only checkpoints."""
    check_path(folder)
    files = sorted(folder.glob("*.safetensors"))
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(s, str) for s in weight_map.values()):
            raise SpecdecError(f"{index}: not a valid safetensors index (no weight_map); re-download it")
        shards = sorted(set(weight_map.values()))
        missing = [s for s in shards if not os.path.lexists(folder / s)]
        if missing:
            raise SpecdecError(f"{folder / missing[0]}: missing shard listed in {index.name}; re-download it")
        files = [folder / s for s in shards]
    if not files:
        pickles = [p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES]
        if pickles:
            raise SpecdecError(
                f"{folder / pickles[0]}: pickle weights are refused (unpickling can run arbitrary code); "
                "use a safetensors checkpoint"
            )
        raise SpecdecError(f"{folder}: no .safetensors weights found")
    for f in files:
        check_safetensors(f)
    return files


def load_safetensors(path: Path) -> dict:
    """The tensors of one checked safetensors file, lazily (read from disk when evaluated)."""
    check_path(path)
    check_regular(path, "re-download or re-convert it")
    try:
        return mx.load(str(path))
    except (RuntimeError, ValueError) as e:  # what mlx raises on a file it cannot parse
        raise SpecdecError(f"{path}: cannot load ({e}); re-download or re-convert it") from None


def read_weights(folder: Path) -> dict:
    weights = {}
    for f in weight_files(folder):
        weights.update(load_safetensors(f))
    return weights


def read_eos_ids(folder: Path) -> list[int] | None:
    """The end-of-sequence ids in `folder/generation_config.json` (None without the file or the key)."""
    path = folder / "generation_config.json"
    if not os.path.lexists(path):
        return None
    ids = read_json(path).get("eos_token_id")
    if ids is None:
        return None
    ids = [ids] if isinstance(ids, int) else ids
    if not (isinstance(ids, list) and all(_whole(i) for i in ids)):
        raise SpecdecError(f"{path}: eos_token_id must be a token id or a list of token ids; fix or re-download it")
    return ids


# --- writing the user's files ---------------------------------------------------------------
def check_apart(outputs: dict[str, PathLike | None], inputs: dict[str, PathLike | None]) -> None:
    """Refuse (UsageError, before anything is written) an output that is one of the run's inputs or
    a folder holding one: writing it would replace what the run reads. {option: path}; None: not given."""
    for out_option, out in outputs.items():
        if out is None:
            continue
        written = Path(os.path.realpath(user_path(out, out_option)))
        for in_option, src in inputs.items():
            if src is None:
                continue
            read = Path(os.path.realpath(user_path(src, in_option)))
            if written == read or _same_file(written, read):
                relation = "is"
            elif written in read.parents:
                relation = "holds"
            else:
                continue
            raise UsageError(
                f"{out_option} {shown(out)} {relation} {in_option} {shown(src)}: writing it would replace what "
                f"this run reads; choose another {out_option}"
            )


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)  # hard links too
    except (OSError, ValueError):
        return False


def _target(path: str | Path) -> Path:
    """Where writing `path` lands: a symbolic link's target (the link stays a link)."""
    return Path(os.path.realpath(path)) if os.path.islink(path) else Path(path)


def _special(path: Path) -> bool:
    """An existing file that is not a regular one (/dev/stdout's pipe or terminal, a FIFO, a device):
    written in place, since renaming a temporary file over it would replace it, not write to it."""
    return path.exists() and not path.is_file() and not path.is_dir()


def check_output(path: str | Path, option: str) -> None:
    """Fail now, in one line, if `path` cannot be written: a folder, no parent folder, a read-only folder."""
    path = _target(user_path(path, option))
    if _special(path):
        if not os.access(path, os.W_OK):
            raise SpecdecError(f"{path}: cannot write (permission denied)")
        return
    if path.is_dir():
        raise SpecdecError(f"{path}: is a folder; give {option} a file name")
    if not path.parent.is_dir():
        raise SpecdecError(f"{path}: cannot write (no folder {path.parent})")
    try:  # the one honest test of a folder: make (and remove) a file in it, as the real write will
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise SpecdecError(f"{path}: cannot write in {path.parent} ({e.strerror})") from None


def write_atomically(path: str | Path, write: Callable[[BinaryIO], None], option: str = "the output") -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    On any failure the temporary file is removed and `path` is left as it was; an OSError becomes
    a one-line SpecdecError. The new file gets the old file's mode, or the umask's for a new one.
    A symbolic link is followed (its target is replaced, the link kept); a FIFO, device or
    /dev/stdout is written in place. `option` names the path in a message about the path itself.
    """
    path = _target(user_path(path, option))
    if _special(path):
        try:
            with open(path, "wb") as f:
                write(f)
        except OSError as e:
            raise SpecdecError(f"{path}: cannot write ({e.strerror or e})") from None
        return
    try:
        mode = path.stat().st_mode & 0o777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise SpecdecError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
