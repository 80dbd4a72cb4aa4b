"""`convert`: a Gemma 4 target and its MTP drafter (hub repos or folders) -> one MLX bundle.

    BUNDLE/target/    config.json (gemma4_text, traps fixed, mlx-lm `quantization`), shards,
                      generation_config.json and tokenizer files: `mlx_lm.load` takes it as it is
    BUNDLE/drafter/   config.json (gemma4_assistant + `quantization`), shards
    BUNDLE/vision/    when the target has one: the vision tower and its embedder in the source's
                      floats, the multimodal config.json (vision_config, text_config, image token
                      ids) and the processor config; media.py loads it on the first image only
    BUNDLE/audio/     when the target has one (E2B, E4B): the audio tower as the checkpoint has it
                      (audio_plan.py); media_audio.py loads it on the first clip only
    BUNDLE/manifest.json

Every family (E2B/E4B, 12B `gemma4_unified`, 26B-A4B MoE, 31B) goes through the same phases:
the per-family differences are the tensor mapping (`models.target.text_weights`: fused experts
split, unused K/V dropped) and the quantisation rules (`quantise.TARGET_RULES`: the router at
>= 8 bits). A source that is already quantised (mlx-community) has its quantised modules copied
as they are, never quantised twice. The configs' `quantization` and the manifest describe what
was written, module by module (`write.plan_tensors`).

Phases, in this order so that a bad input costs neither a download nor a write:
1. resolve both sources (hub: metadata only, weights listed not fetched);
2. check the configs, the pair and the tokenizer, and the disk space for the download;
3. download the weights (hub cache; an interrupted download resumes on the next run);
4. plan every tensor (headers only) and check the disk space for the output;
5. write into a hidden temporary folder beside BUNDLE, check that both models load, rename.
Any failure or interrupt in 5 removes the temporary folder: BUNDLE is either complete or absent.
SIGTERM and SIGHUP are interrupts like Ctrl-C while a convert runs. Converts into one BUNDLE
exclude each other: each holds a lock on `.NAME.lock` beside it from the first check to the
rename, and a second one fails at once. The temporary folder holds the writer's pid
(`CONVERTING`) until the rename, so a later convert (holding the lock) removes the temporary
folders of converts that were killed outright.

`--force` replaces only a bundle (a manifest.json that this converter wrote, in a format it
knows, listing every file in the folder) or an empty folder; the old bundle is moved aside into a
folder made for the purpose, put back if the new one cannot take its place, and deleted only
after it has. Nothing else is ever deleted: only paths this run created (and a killed convert's
temporary folder). The bundle's folders and files get the user's umask.
"""

from __future__ import annotations

import errno
import fcntl
import glob
import json
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from importlib.metadata import version
from pathlib import Path

import mlx.core as mx
from mlx_lm.utils import load_model

from mlx_specdec import __version__
from mlx_specdec.errors import SpecdecError, UsageError
from mlx_specdec.files import check_apart, check_path, read_config, read_eos_ids, shown, user_path
from mlx_specdec.load import check_pair, load_drafter
from mlx_specdec.media import image_spec, load_vision, tower_class
from mlx_specdec.media_audio import load_audio
from mlx_specdec.models import quantise
from mlx_specdec.models.drafter import Drafter, DrafterArgs, drafter_quantization
from mlx_specdec.models.target import make_model, text_config, text_quantization, text_weights
from weights_convert import fetch, write
from weights_convert.audio_plan import audio_plan, audio_sanitize

FORMAT_VERSION = 1
QUANT_KEYS = ("quantization", "quantization_config")
KNOWN_FORMATS = (1,)  # bundle formats `--force` may replace
TOKENIZER_FILES = fetch.TOKENIZER_FILES  # copied into BUNDLE/target
PROCESSOR_FILES = fetch.PROCESSOR_FILES  # copied into BUNDLE/vision (the image budget)
MARKER = "CONVERTING"  # in the temporary folder until the rename: {"pid", "host"} of its writer
TERMINATIONS = (signal.SIGTERM, signal.SIGHUP)  # handled like Ctrl-C while a convert runs
# OSError errno -> what to tell the user when writing the bundle fails.
WRITE_ERRORS = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
}
# Headroom on top of the computed output size: index, configs, filesystem blocks.
DISK_MARGIN = 1.05
DISK_SLACK = 16 << 20


def convert(
    target: str,
    drafter: str,
    output: str | Path,
    *,
    bits: int = 4,
    group_size: int = 64,
    force: bool = False,
    target_revision: str | None = None,
    drafter_revision: str | None = None,
    target_rules: dict | None = None,
    drafter_rules: dict | None = None,
    log: Callable[[str], None] = lambda line: None,
) -> dict:
    """Convert a target and drafter into a bundle at `output`; returns the manifest.

    `target`/`drafter`: a folder, `owner/name` or `owner/name@revision`. `bits` 16 keeps the
    checkpoint's floats. `*_rules` override the measured per-module choices (see quantise.py).
    Raises SpecdecError (one line) for every bad input; writes nothing in that case.
    """
    rules = (target_rules, drafter_rules)
    if bits not in quantise.BITS:
        raise UsageError(f"--bits must be one of {', '.join(map(str, quantise.BITS))}, not {bits}")
    if group_size not in quantise.GROUP_SIZES:
        raise UsageError(f"--group-size must be one of {', '.join(map(str, quantise.GROUP_SIZES))}, not {group_size}")
    if str(output) == "":  # Path("") is the current folder
        raise UsageError("-o is empty; give the bundle folder to create")
    output = user_path(output, "-o").absolute()
    local = {f"--{role}": spec for role, spec in (("target", target), ("drafter", drafter)) if _is_folder(spec)}
    check_apart({"-o": output}, local)
    _check_output(output, force)
    with _interrupts_on_termination(), _exclusive(output, log):
        _check_output(output, force)  # again, now that no other convert can write there
        return _convert(target, drafter, output, bits, group_size, target_revision, drafter_revision, rules, log)


def _convert(target, drafter, output, bits, group_size, target_revision, drafter_revision, rules, log) -> dict:
    """Phases 1-5 of `convert`, holding the output's lock."""
    target_rules, drafter_rules = rules
    # 1. resolve
    tsrc = fetch.resolve(target, target_revision, "target")
    dsrc = fetch.resolve(drafter, drafter_revision, "drafter")

    # 2. check configs, pair, tokenizer, disk for the download
    text_cfg, target_source_q = _target_config(tsrc)
    if target_source_q and target_source_q.get("bits") not in (None, bits):
        log(
            f"--bits {bits} does not apply to {tsrc.spec}: it is already {target_source_q['bits']}-bit, and its "
            "quantised weights are copied as they are"
        )
    draft_raw, draft_args = _drafter_config(dsrc)
    draft_source_q = drafter_quantization(draft_raw)  # an already-quantised drafter
    draft_raw = {k: v for k, v in draft_raw.items() if k not in QUANT_KEYS}
    check_pair(text_cfg, draft_args, where=f"drafter {dsrc.spec}")
    if not any((tsrc.folder / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        raise SpecdecError(f"target {tsrc.spec} has no tokenizer (tokenizer.json or tokenizer.model)")
    read_eos_ids(tsrc.folder)  # a generation_config.json the bundle could not load with is refused now
    download = tsrc.download_bytes + dsrc.download_bytes
    if download:
        _check_disk(_hub_cache(), download, "the download")

    # 3. download
    if download:
        log(f"downloading {_gb(download)} of weights")
    tsrc, dsrc = fetch.fetch_weights(tsrc), fetch.fetch_weights(dsrc)

    # 4. plan every tensor, check disk for the output
    target_model = make_model(text_cfg)  # lazy: its random init is never evaluated
    draft_model = Drafter(draft_args)
    target_q = quantise.plan(
        target_model, quantise.TARGET_RULES if target_rules is None else target_rules, bits, group_size
    )
    draft_q = quantise.plan(
        draft_model, quantise.DRAFTER_RULES if drafter_rules is None else drafter_rules, bits, group_size
    )

    def target_sanitize(key, array):
        return list(text_weights(key, array, text_cfg, target_model).items())  # mlx-lm's names (experts split)

    def draft_sanitize(key, array):
        return list(draft_model.sanitize({key: array}).items())  # the drafter's own names and dtypes

    # What is written per module (quantised here, copied already quantised, or float): the
    # configs and the manifest come from this, not from the plan.
    target_tensors, target_q = write.plan_tensors(tsrc.folder, target_sanitize, target_q, target_source_q)
    draft_tensors, draft_q = write.plan_tensors(dsrc.folder, draft_sanitize, draft_q, draft_source_q)
    vision_cfg, vision_tensors, vision_sanitize = _vision_plan(tsrc, log)
    audio_cfg, audio_tensors = audio_plan(tsrc, log, QUANT_KEYS)
    needed = sum(t.out_bytes for t in target_tensors + draft_tensors + vision_tensors + audio_tensors)
    _check_disk(output.parent, needed * DISK_MARGIN + DISK_SLACK, f"the bundle at {output}")

    # 5. write beside the output, verify, rename
    replacing = os.path.lexists(output)
    sources = (tsrc.folder, dsrc.folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private; the bundle is a folder like any other
        (tmp / MARKER).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    except OSError as e:
        raise SpecdecError(_os_error(e, output, sources, replacing)) from None
    try:
        log(f"writing target ({bits}-bit)" if bits < 16 else "writing target")
        for part, tensors in (("target", target_tensors), ("drafter", draft_tensors)):
            if _copied(tensors):
                log(f"{part}: {_copied(tensors)} modules are already quantised; copied as they are")
        target_cfg = {**text_cfg, **_quant_keys(quantise.config_entry(target_q, bits, group_size))}
        target_bytes = _write_model(tmp / "target", target_cfg, target_tensors, target_sanitize)
        for name in TOKENIZER_FILES + ("generation_config.json",):
            if (tsrc.folder / name).is_file():
                shutil.copyfile(tsrc.folder / name, tmp / "target" / name)
        log("writing drafter")
        draft_cfg = {**draft_raw, **_quant_keys(quantise.config_entry(draft_q, bits, group_size))}
        draft_bytes = _write_model(tmp / "drafter", draft_cfg, draft_tensors, draft_sanitize)
        vision_bytes = 0
        if vision_tensors:
            log("writing vision tower (floats as in the source)")
            vision_bytes = _write_model(tmp / "vision", vision_cfg, vision_tensors, vision_sanitize)
            for name in PROCESSOR_FILES:
                if (tsrc.folder / name).is_file():
                    shutil.copyfile(tsrc.folder / name, tmp / "vision" / name)
        if audio_tensors:
            log("writing audio tower (as in the source)")
            audio_bytes = _write_model(tmp / "audio", audio_cfg, audio_tensors, audio_sanitize)
            for name in PROCESSOR_FILES:
                if (tsrc.folder / name).is_file():
                    shutil.copyfile(tsrc.folder / name, tmp / "audio" / name)
        _check_loadable(tmp)
        manifest = {
            "format_version": FORMAT_VERSION,
            "converter": {
                "name": "mlx-specdec",
                "version": __version__,
                "mlx": mx.__version__,
                "mlx_lm": version("mlx-lm"),
            },
            "sources": {"target": _source_entry(tsrc), "drafter": _source_entry(dsrc)},
            "quantization": {
                "bits": bits,
                "group_size": group_size,
                "mode": "affine",
                "target": dict(sorted(target_q.items())),
                "drafter": dict(sorted(draft_q.items())),
                "copied_quantised": {"target": _copied(target_tensors), "drafter": _copied(draft_tensors)},
            },
            "sizes": {
                "target": {"bytes": target_bytes, "tensors": len(target_tensors)},
                "drafter": {"bytes": draft_bytes, "tensors": len(draft_tensors)},
            },
        }
        if vision_tensors:
            manifest["sizes"]["vision"] = {"bytes": vision_bytes, "tensors": len(vision_tensors)}
        if audio_tensors:
            manifest["sizes"]["audio"] = {"bytes": audio_bytes, "tensors": len(audio_tensors)}
        (tmp / MARKER).unlink()
        manifest["files"] = _files(tmp)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        _replace(tmp, output, replacing)
    except BaseException as e:  # KeyboardInterrupt included: never leave a partial bundle
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):  # disk full, read-only, ... while writing
            raise SpecdecError(_os_error(e, output, sources, replacing)) from None
        raise
    return manifest


def _is_folder(spec: str) -> bool:
    try:
        return user_path(spec, "the source").is_dir()
    except SpecdecError:  # not a path at all: `resolve` says so
        return False


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP during a convert: unwinds like Ctrl-C, so the same cleanup runs."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _interrupts_on_termination() -> Iterator[None]:
    """While a convert runs (in the main thread, where Python delivers signals), SIGTERM and SIGHUP
    raise `Terminated` instead of ending the process with the temporary folder left behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum, frame):
        raise Terminated(signum)

    previous = {s: signal.signal(s, interrupt) for s in TERMINATIONS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextmanager
def _exclusive(output: Path, log: Callable[[str], None]) -> Iterator[None]:
    """Hold the lock `.NAME.lock` beside `output` (its parent folders made, and removed again if the
    convert fails); another convert holding it -> one line, at once. Under the lock, remove the
    temporary folders of converts into `output` that were killed (their writer's pid is gone)."""
    made = _make_parents(output.parent)
    lock = output.parent / f".{output.name}.lock"
    done = False
    try:
        fd = _lock(lock, output)
        try:
            _remove_stale(output, log)
            yield
            done = True
        finally:
            lock.unlink(missing_ok=True)  # while still held: a convert that opened it meanwhile retries
            os.close(fd)
    finally:
        if not done:
            for folder in reversed(made):  # only folders this convert made, and only while empty
                with suppress(OSError):
                    folder.rmdir()


def _make_parents(folder: Path) -> list[Path]:
    """Make `folder` and its missing parents -> those made here, outermost first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    made = []
    for f in reversed(missing):
        try:
            f.mkdir()
            made.append(f)
        except FileExistsError:  # made meanwhile by someone else: theirs, not ours to remove
            pass
        except OSError as e:
            raise SpecdecError(f"cannot create {f} ({_reason(e)}); choose another -o") from None
    return made


def _reason(e: OSError) -> str:
    return WRITE_ERRORS.get(e.errno) or e.strerror or type(e).__name__


def _lock(lock: Path, output: Path) -> int:
    """An exclusive flock on `lock` (created if need be) -> its descriptor; SpecdecError if held."""
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:
            raise SpecdecError(f"cannot create {lock} ({_reason(e)}); choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpecdecError(
                f"another `specdec convert` is writing {output}; wait for it to finish or choose another -o"
            ) from None
        try:  # the last holder removes the file as it lets go: then lock the file now at that path
            here = os.stat(lock)
            if (here.st_dev, here.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino):
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _remove_stale(output: Path, log: Callable[[str], None]) -> None:
    """Remove `.NAME.*.partial` folders whose CONVERTING file names a process of this host that is gone."""
    for folder in output.parent.glob(f".{glob.escape(output.name)}.*.partial"):
        try:
            owner = json.loads((folder / MARKER).read_text())
            pid, host = owner["pid"], owner["host"]
        except (OSError, ValueError, TypeError, KeyError):
            continue  # not provably ours: left alone
        if host != socket.gethostname() or not isinstance(pid, int) or _alive(pid):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        log(f"removed {folder}, left by a convert that was killed (pid {pid})")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _check_output(output: Path, force: bool) -> None:
    """Refuse, before anything is downloaded, an output that cannot be written or must not be replaced."""
    check_path(output, fix="choose another -o")
    parent = _existing(output.parent)
    if not parent.is_dir():
        raise SpecdecError(f"cannot create {output}: {parent} is a file, not a folder; choose another -o")
    if not os.access(parent, os.W_OK | os.X_OK):
        why = "is on a read-only file system" if os.statvfs(parent).f_flag & os.ST_RDONLY else "is not writable"
        raise SpecdecError(f"cannot create {output}: {parent} {why}; choose another -o")
    if not os.path.lexists(output):
        return
    # --force replaces a bundle or an empty folder, never an unrelated folder or file: anything else
    # is refused whether or not --force was given, so the advice to pass it is never a dead end.
    if output.is_symlink() or not output.is_dir():
        kind = "a symbolic link" if output.is_symlink() else "a file"
        raise SpecdecError(f"{output} is {kind}, not a bundle; refusing to replace it, choose another -o")
    try:
        if not any(output.iterdir()):
            if not force:
                raise SpecdecError(f"{output} already exists; pass --force to replace it")
            return
    except OSError as e:  # a folder we may not list is not ours to replace
        raise SpecdecError(
            f"{output} cannot be read ({e.strerror}); refusing to replace it, choose another -o"
        ) from None
    manifest = output / "manifest.json"
    if not manifest.is_file():
        raise SpecdecError(f"{output} exists and is not a bundle; refusing to replace it, choose another -o")
    foreign = _foreign(manifest)
    if foreign:
        raise SpecdecError(f"{manifest} {foreign}; refusing to replace {output}, choose another -o")
    unlisted = _unlisted(output, manifest)
    if unlisted:
        more = f" and {len(unlisted) - 3} more" if len(unlisted) > 3 else ""
        raise SpecdecError(
            f"{output} holds files its manifest.json does not list ({', '.join(unlisted[:3])}{more}); refusing to "
            "replace it, move them out or choose another -o"
        )
    if not force:
        raise SpecdecError(f"{output} already exists; pass --force to replace it")


def _foreign(manifest: Path) -> str | None:
    """Why `manifest` is not one this converter wrote (None when it is one)."""
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, not UTF-8
        data = None
    converter = data.get("converter") if isinstance(data, dict) else None
    if not isinstance(converter, dict) or converter.get("name") != "mlx-specdec":
        return "was not written by `specdec convert`"
    if data.get("format_version") not in KNOWN_FORMATS:
        return f"has bundle format_version {data.get('format_version')!r}, which this mlx-specdec does not know"
    return None


def _files(bundle: Path) -> list[str]:
    """Every file under `bundle` (links included), as sorted relative POSIX paths."""
    return sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_symlink() or not p.is_dir())


def _unlisted(output: Path, manifest: Path) -> list[str]:
    """The files in bundle `output` that its manifest does not list (a bundle written before the
    manifest listed its files: those not named like the converter's own)."""
    listed = json.loads(manifest.read_text()).get("files")
    if isinstance(listed, list):
        ours = set(listed) | {"manifest.json"}
        return [f for f in _files(output) if f not in ours]
    known = {"config.json", "model.safetensors.index.json", "generation_config.json", *TOKENIZER_FILES}

    def converters(name: str) -> bool:
        part, _, file = name.partition("/")
        weights = file.startswith("model") and file.endswith(".safetensors")
        in_part = part in ("target", "drafter") and "/" not in file
        return name == "manifest.json" or in_part and (weights or file in known)

    return [f for f in _files(output) if not converters(f)]


def _target_config(src: fetch.Source) -> tuple[dict, dict | None]:
    """(normalised text config without any source quantisation, the source's quantisation in our names)."""
    raw = read_config(src.folder)
    try:
        cfg = text_config(raw)
        return {k: v for k, v in cfg.items() if k not in QUANT_KEYS}, text_quantization(raw, cfg)
    except SpecdecError as e:
        raise SpecdecError(f"target {src.spec}: {e}") from None


def _copied(tensors: list[write.Tensor]) -> int:
    """Modules copied through already quantised (their scales come from the source)."""
    return sum(t.name.endswith(".scales") for t in tensors)


def _drafter_config(src: fetch.Source) -> tuple[dict, DrafterArgs]:
    raw = read_config(src.folder)
    try:
        return raw, DrafterArgs.from_config(raw)
    except SpecdecError as e:
        raise SpecdecError(f"drafter {src.spec}: {e}") from None


def _quant_keys(entry: dict | None) -> dict:
    # mlx-lm writes the same dict under both names ("quantization_config" for HF tooling).
    return {"quantization": entry, "quantization_config": entry} if entry else {}


def _write_model(folder: Path, config: dict, tensors: list[write.Tensor], sanitize: write.Sanitize) -> int:
    folder.mkdir()
    written = write.write_tensors(tensors, sanitize, folder)
    (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return written


def _check_loadable(bundle: Path) -> None:
    """Both models (and the vision tower, if kept) accept the written weights (names, shapes,
    quantisation); the target and the tower lazily."""
    try:
        load_model(bundle / "target", lazy=True, strict=True)
    except ValueError as e:
        raise SpecdecError(f"internal error: the converted target does not load in mlx-lm ({e})") from None
    load_drafter(bundle / "drafter")
    if (bundle / "vision").is_dir():
        load_vision(bundle / "vision", lazy=True)
    if (bundle / "audio").is_dir():
        load_audio(bundle / "audio", lazy=True)


def _vision_plan(src: fetch.Source, log) -> tuple[dict, list[write.Tensor], write.Sanitize]:
    """(config.json for BUNDLE/vision, its tensors, their sanitize): the source's vision tower and
    embedder (the 12B's encoder-free embedder), kept as the source has them (floats, or modules an
    mlx-community checkpoint quantised); none when the target has no tower, or one `media.py` cannot
    load (an image spec it refuses), said in `log`."""
    raw = read_config(src.folder)
    if not raw.get("vision_config"):
        return {}, [], None
    try:
        cls = tower_class(image_spec(src.folder))
    except SpecdecError as e:
        log(f"vision tower not kept: {e}")
        return {}, [], None

    def sanitize(key, array):
        return list(cls.sanitize({key: array}).items())  # the tower and its embedder, as they are

    tensors, _ = write.plan_tensors(src.folder, sanitize, {}, quantise.source_quantization(raw))
    keys = ("model_type", "architectures", "vision_config", "text_config", "image_token_id")
    keys += ("boi_token_id", "eoi_token_id", "pad_token_id")
    config = {k: raw[k] for k in keys if k in raw}
    config["text_config"] = {k: v for k, v in (raw.get("text_config") or {}).items() if k not in QUANT_KEYS}
    return write.tower_quantisation(config, raw, tensors, "vision", log), tensors, sanitize


def _replace(tmp: Path, output: Path, replacing: bool) -> None:
    """Move the finished bundle into place; an old bundle is removed only once the new one is there.

    The old one is moved aside into a uniquely named folder made here (a `.NAME.old` already
    there is not ours and is left alone), so the only thing deleted is what was moved aside.
    `replacing`: whether `output` existed when it was checked; one that has appeared since was
    made by someone else (a convert without the lock) and is left alone.
    """
    if not replacing:
        if os.path.lexists(output):
            raise SpecdecError(
                f"another convert wrote {output} while this one ran; left it as it is (--force replaces it)"
            )
        os.mkdir(output)  # fails if it appears now; rename(2) then replaces only this empty folder
        tmp.rename(output)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
    try:
        output.rename(aside)  # rename(2) replaces an empty directory
        tmp.rename(output)
    except BaseException:
        if not os.path.lexists(output):
            aside.rename(output)  # the old bundle goes back
        elif any(aside.iterdir()):  # both renames happened: the new bundle is in place
            shutil.rmtree(aside, ignore_errors=True)
        else:  # nothing was moved aside (or only an empty folder, already replaced)
            aside.rmdir()
        raise
    shutil.rmtree(aside, ignore_errors=True)


def _os_error(error: OSError, output: Path, sources: tuple[Path, ...], replacing: bool) -> str:
    """The one line for an OSError while writing the bundle (or reading a source file for it)."""
    reason = WRITE_ERRORS.get(error.errno) or error.strerror or type(error).__name__
    name = error.filename
    if name is not None and any(Path(os.fsdecode(name)).is_relative_to(s) for s in sources):
        return f"cannot read {shown(name)} ({reason}); check the file and its permissions"
    fix = "free some space or choose another -o" if error.errno in (errno.ENOSPC, errno.EDQUOT) else "choose another -o"
    kept = f"{output} is unchanged" if replacing else "nothing was written"
    return f"cannot write {output} ({reason}); {kept}: {fix}"


def _umask() -> int:
    mask = os.umask(0o077)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _check_disk(folder: Path, needed: float, what: str) -> None:
    free = shutil.disk_usage(_existing(folder)).free
    if free < needed:
        raise SpecdecError(f"not enough disk space for {what}: needs {_gb(needed)}, {_gb(free)} free")


def _existing(folder: Path) -> Path:
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _hub_cache() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _source_entry(src: fetch.Source) -> dict:
    if src.repo is None:
        return {"path": str(src.folder), "revision": None}
    return {"repo": src.repo, "revision": src.revision}


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
