"""The converter and file loading on bad input and faults: one line, never a traceback, and never
a change to a file of the user's.

Each test runs the command line (typer's CliRunner) and asserts the exact line on stderr, the exit
status, that no exception escaped (CliRunner would hold it: a traceback for a user), and that every
file under the test's folder is as it was (`tree` checksums). Full disks and read-only file
systems are real small tmpfs mounts when the tests run as root (skipped otherwise), and also
simulated by a patched write, which runs everywhere.
"""

import errno
import io
import json
import os
import struct
import subprocess
from pathlib import Path

import mlx.core as mx
import pytest
from huggingface_hub.errors import DryRunError, HfHubHTTPError, LocalEntryNotFoundError

import weights_convert
from weights_convert import FORMAT_VERSION, fetch, write

from .helpers.bad_input import (
    DRAFTER,
    bundle,
    cli,
    convert_args,
    convert_module,
    fails,
    generate_args,
    set_config,
    tree,
)
from .helpers.convert import FakeHub, copy, http_error
from .helpers.paths import TARGET


def write_safetensors_header(path: Path, header) -> None:
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(16))


@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    fake = FakeHub(tmp_path_factory.mktemp("cache"), {"acme/target": TARGET, "acme/drafter": DRAFTER})
    monkeypatch.setattr(fetch, "snapshot_download", fake)
    return fake


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB tmpfs at tmp_path/mnt (root only), unmounted afterwards."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root; the patched-write tests cover this case")
    mount = ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)]
    done = subprocess.run(mount, capture_output=True, check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    yield mnt
    subprocess.run(["umount", str(mnt)], check=True)


def non_utf8_folder(parent: Path) -> Path:
    folder = parent / os.fsdecode(b"caf\xe9")  # Latin-1 "café"
    try:
        folder.mkdir()
    except OSError as e:  # macOS file systems refuse such names outright
        pytest.skip(f"this file system refuses names that are not UTF-8 ({e.strerror})")
    return folder


# --- --force never deletes what is not ours --------------------------------------------------
def test_force_refuses_a_folder_whose_manifest_json_is_not_a_bundles(tmp_path):
    app_dir = tmp_path / "extension"
    (app_dir / "src").mkdir(parents=True)
    (app_dir / "manifest.json").write_text('{"manifest_version": 3, "name": "my extension"}')
    (app_dir / "src" / "app.js").write_text("console.log('mine')")
    fails(
        tmp_path,
        convert_args(app_dir, TARGET, DRAFTER, "--force"),
        f"{app_dir / 'manifest.json'} was not written by `specdec convert`; refusing to replace {app_dir}, "
        "choose another -o",
    )


def test_force_refuses_a_bundle_of_a_format_version_it_does_not_know(tmp_path):
    out = bundle(tmp_path / "b")
    manifest = json.loads((out / "manifest.json").read_text())
    (out / "manifest.json").write_text(json.dumps({**manifest, "format_version": FORMAT_VERSION + 98}))
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, "--force"),
        f"{out / 'manifest.json'} has bundle format_version {FORMAT_VERSION + 98}, which this mlx-specdec "
        f"does not know; refusing to replace {out}, choose another -o",
    )


@pytest.mark.parametrize("kind", ["file", "symlink"])
def test_force_refuses_a_file_or_a_symbolic_link(tmp_path, kind):
    real = bundle(tmp_path / "real")
    out = tmp_path / "out"
    out.write_text("notes") if kind == "file" else out.symlink_to(real)
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, "--force"),
        f"{out} is {'a file' if kind == 'file' else 'a symbolic link'}, not a bundle; refusing to replace it, "
        "choose another -o",
    )


def test_force_replaces_our_bundle_and_leaves_an_existing_dot_old_folder_alone(tmp_path):
    out = bundle(tmp_path / "b", bits=16)
    (tmp_path / ".b.old").mkdir()
    (tmp_path / ".b.old" / "precious.txt").write_text("not the converter's")
    before = tree(tmp_path / ".b.old")
    r = cli(*convert_args(out, TARGET, DRAFTER, "--force", "--bits", "8"))
    assert r.code == 0 and not r.escaped, r.stderr
    assert json.loads((out / "manifest.json").read_text())["quantization"]["bits"] == 8
    assert tree(tmp_path / ".b.old") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.old", "b"]


def test_force_replaces_an_empty_folder(tmp_path):
    (tmp_path / "b").mkdir()
    r = cli(*convert_args(tmp_path / "b", TARGET, DRAFTER, "--force"))
    assert r.code == 0 and not r.escaped, r.stderr
    assert (tmp_path / "b" / "manifest.json").is_file()


@pytest.mark.parametrize("old", ["bundle", "empty folder"])
def test_a_failed_replacement_puts_the_old_bundle_back(tmp_path, monkeypatch, old):
    out = bundle(tmp_path / "b", bits=16) if old == "bundle" else tmp_path / "b"
    out.mkdir(exist_ok=True)
    real_rename = Path.rename

    def rename(self, target):
        if self.name.endswith(".partial") and Path(target) == out:  # the new bundle moving into place
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, "--force"),
        f"cannot write {out} (permission denied); {out} is unchanged: choose another -o",
    )


# --- corrupt or unusual files ----------------------------------------------------------------
@pytest.mark.parametrize("command", ["generate", "convert"])
def test_invalid_generation_config_json_names_the_file(tmp_path, command):
    t = copy(TARGET, tmp_path / "t")
    (t / "generation_config.json").write_text("{bad")
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    fails(
        tmp_path,
        args,
        f"{t / 'generation_config.json'}: not valid JSON (Expecting property name enclosed in "
        "double quotes: line 1 column 2 (char 1)); fix or re-download it",
    )


def test_generation_config_eos_token_id_that_is_not_an_id_is_refused(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    (t / "generation_config.json").write_text('{"eos_token_id": "<eos>"}')
    fails(
        tmp_path,
        generate_args(t),
        f"{t / 'generation_config.json'}: eos_token_id must be a token id or a list "
        "of token ids; fix or re-download it",
    )


@pytest.mark.parametrize(
    "header, problem",
    [
        ([1, 2], "a list, not an object"),
        ({"w": {"dtype": "F32", "shape": [4]}}, "tensor 'w' has no valid data_offsets"),
        ({"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, "16"]}}, "tensor 'w' has no valid data_offsets"),
        ({"w": {"shape": [4], "data_offsets": [0, 16]}}, "tensor 'w' has no valid dtype and shape"),
        (
            {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}},
            "tensor 'w' spans 8 bytes, its F32 [4] needs 16",
        ),
        ({"__metadata__": {"format": 1}}, "__metadata__ is not a map of strings"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "convert"])
def test_corrupt_safetensors_header_names_the_file(tmp_path, header, problem, command):
    t = copy(TARGET, tmp_path / "t")
    write_safetensors_header(t / "model.safetensors", header)
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    fails(
        tmp_path,
        args,
        f"{t / 'model.safetensors'}: corrupt safetensors header ({problem}); re-download or re-convert it",
    )


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_config_json_that_is_a_list_names_the_file(tmp_path, command):
    t = copy(TARGET, tmp_path / "t")
    (t / "config.json").write_text("[1, 2]")
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    fails(tmp_path, args, f"{t / 'config.json'}: expected a JSON object, found a list; fix or re-download it")


@pytest.mark.parametrize(
    "key, value, want",
    [
        ("hidden_size", "64", 'hidden_size must be a whole number >= 0, not "64"'),
        ("num_hidden_layers", 10.5, "num_hidden_layers must be a whole number >= 0, not 10.5"),
        ("vocab_size", True, "vocab_size must be a whole number >= 0, not true"),
        ("rms_norm_eps", "1e-6", 'rms_norm_eps must be a number, not "1e-6"'),
        ("rope_parameters", [1], "rope_parameters must be a JSON object, not a list"),
    ],
)
@pytest.mark.parametrize("command", ["generate", "convert"])
def test_config_json_with_a_wrong_type_where_a_number_belongs(tmp_path, key, value, want, command):
    t = copy(TARGET, tmp_path / "t")
    set_config(t, key, value)
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    fails(tmp_path, args, f"{t / 'config.json'}: {want}; fix or re-download it")


def test_drafter_config_with_a_string_in_its_text_config_is_named_by_key_path(tmp_path):
    d = copy(DRAFTER, tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["head_dim"] = "32"
    (d / "config.json").write_text(json.dumps(cfg))
    fails(
        tmp_path,
        convert_args(tmp_path / "out", TARGET, d),
        f'{d / "config.json"}: text_config.head_dim must be a whole number >= 0, not "32"; fix or re-download it',
    )


def test_hub_answering_with_a_page_that_is_not_json(tmp_path, hub):
    hub.repos["acme/portal"] = json.JSONDecodeError("Expecting value", "<html>log in</html>", 0)
    fails(
        tmp_path,
        convert_args(tmp_path / "out", "acme/portal"),
        "the Hugging Face Hub at https://huggingface.co answered with something that is not JSON for acme/portal; "
        "check HF_ENDPOINT and your network connection, then try again",
    )


@pytest.mark.parametrize("command", ["generate", "convert"])
def test_folder_name_that_is_not_utf8_says_so_and_not_re_download(tmp_path, command):
    t = copy(TARGET, non_utf8_folder(tmp_path) / "t")
    args = generate_args(t) if command == "generate" else convert_args(tmp_path / "out", t)
    fails(
        tmp_path,
        args,
        f"{tmp_path}/caf\\xe9/t: the name 'caf\\xe9' is not valid UTF-8, which mlx cannot open; rename it",
    )


def test_output_folder_name_that_is_not_utf8_is_refused_before_writing(tmp_path):
    out = non_utf8_folder(tmp_path) / "b"
    fails(
        tmp_path,
        convert_args(out),
        f"{tmp_path}/caf\\xe9/b: the name 'caf\\xe9' is not valid UTF-8, which mlx cannot open; choose another -o",
    )


@pytest.mark.parametrize("role", ["target", "drafter"])
def test_already_quantised_checkpoint_converts_by_copying_its_quantised_modules(tmp_path, role):
    """A quantised source (here a bundle's own target or drafter) is copied through, never
    quantised twice (tests/test_convert_families.py covers the mlx-community layout)."""
    b = bundle(tmp_path / "b")
    target, drafter = (b / "target", DRAFTER) if role == "target" else (TARGET, b / "drafter")
    manifest = weights_convert.convert(str(target), str(drafter), tmp_path / "out", bits=8)
    assert manifest["quantization"]["copied_quantised"][role] > 0
    src, out = mx.load(str(b / role / "model.safetensors")), mx.load(str(tmp_path / "out" / role / "model.safetensors"))
    assert all(mx.array_equal(src[k], out[k]) for k in src if k.endswith(".scales"))


def test_integer_weights_without_a_quantisation_config_are_one_line_not_a_traceback(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    weights = mx.load(str(t / "model.safetensors"))
    key = "model.layers.0.mlp.up_proj.weight"
    weights[key] = weights[key].astype(mx.uint32)  # what a stripped quantised checkpoint holds
    mx.save_safetensors(str(t / "model.safetensors"), weights)
    fails(
        tmp_path,
        convert_args(tmp_path / "out", t, DRAFTER, "--group-size", "32"),
        f"{t / 'model.safetensors'}: {key} holds uint32 values, not floating-point weights (already quantised?); "
        "convert the original floating-point checkpoint",
    )


# --- output errors ---------------------------------------------------------------------------
def test_output_on_a_read_only_file_system(tmp_path, tmpfs):
    subprocess.run(["mount", "-o", "remount,ro", str(tmpfs)], check=True)
    fails(
        tmp_path,
        convert_args(tmpfs / "b"),
        f"cannot create {tmpfs / 'b'}: {tmpfs} is on a read-only file system; choose another -o",
    )


def test_output_turning_read_only_while_writing(tmp_path, monkeypatch):
    def read_only(path, mode):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(write, "open", read_only, raising=False)  # the shard files (sources are read elsewhere)
    out = tmp_path / "b"
    fails(
        tmp_path,
        convert_args(out),
        f"cannot write {out} (read-only file system); nothing was written: choose another -o",
    )


def test_output_below_a_path_that_is_a_file(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    out = tmp_path / "notes.txt" / "sub" / "b"
    fails(
        tmp_path,
        convert_args(out),
        f"cannot create {out}: {tmp_path / 'notes.txt'} is a file, not a folder; choose another -o",
    )


class FullDisk(io.FileIO):
    """A file that takes `room` bytes, then fails the way a full disk does."""

    room = 4096

    def write(self, data):
        if self.tell() + len(memoryview(data).cast("B")) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        return super().write(data)


@pytest.mark.parametrize("force", [False, True])
def test_disk_full_while_writing_leaves_nothing_half_written(tmp_path, monkeypatch, force):
    out = tmp_path / "b"
    if force:
        bundle(out, bits=16)
    monkeypatch.setattr(write, "open", lambda path, mode: FullDisk(path, "w"), raising=False)
    kept = f"{out} is unchanged" if force else "nothing was written"
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, *(["--force"] if force else [])),
        f"cannot write {out} (no space left on the device); {kept}: free some space or choose another -o",
    )


def test_disk_full_on_a_real_small_file_system(tmp_path, tmpfs, monkeypatch):
    monkeypatch.setattr(convert_module, "_check_disk", lambda *a: None)  # let the write itself hit the limit
    fails(
        tmp_path,
        convert_args(tmpfs / "b", TARGET, DRAFTER, "--bits", "16"),
        f"cannot write {tmpfs / 'b'} (no space left on the device); nothing was written: "
        "free some space or choose another -o",
    )
    assert list(tmpfs.iterdir()) == []


# --- wrong or missing words ------------------------------------------------------------------
def test_hub_server_error_is_not_reported_as_unreachable(tmp_path, hub):
    # What snapshot_download raises when the Hub answers 500: the HTTP error inside a cache miss.
    wrapped = LocalEntryNotFoundError("An error happened while trying to locate the files on the Hub")
    wrapped.__cause__ = http_error(HfHubHTTPError, 500)
    hub.repos["acme/down"] = wrapped
    fails(
        tmp_path,
        convert_args(tmp_path / "out", "acme/down"),
        "the Hugging Face Hub answered HTTP 500 (a server error) for acme/down; try again later",
    )


class ListingFails(FakeHub):
    """Serves the metadata, then answers 503 when the weights are listed (a dry run)."""

    def __call__(self, repo_id, **kw):
        if kw.get("dry_run"):
            raise DryRunError("Dry run cannot be performed") from http_error(HfHubHTTPError, 503)
        return super().__call__(repo_id, **kw)


def test_hub_server_error_while_listing_the_weights(tmp_path, tmp_path_factory, monkeypatch):
    hub = ListingFails(tmp_path_factory.mktemp("cache"), {"acme/target": TARGET})
    monkeypatch.setattr(fetch, "snapshot_download", hub)
    fails(
        tmp_path,
        convert_args(tmp_path / "out", "acme/target"),
        "the Hugging Face Hub answered HTTP 503 (a server error) for acme/target; try again later",
    )


@pytest.mark.parametrize("status", [401, 403])
def test_hub_authentication_failure_says_so_not_run_again(tmp_path, hub, status):
    hub.repos["acme/private"] = http_error(HfHubHTTPError, status)
    fails(
        tmp_path,
        convert_args(tmp_path / "out", "acme/private"),
        f"the Hugging Face Hub refused acme/private (HTTP {status}): authentication failed; check HF_TOKEN or "
        "log in again with `hf auth login`",
    )


@pytest.mark.parametrize("force", [False, True])
def test_ctrl_c_during_convert_says_so_and_exits_130(tmp_path, monkeypatch, force):
    out = tmp_path / "b"
    if force:
        bundle(out, bits=16)
    monkeypatch.setattr(write, "quantise", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    kept = f"{out} is unchanged" if force else f"nothing was written to {out}"
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, *(["--force"] if force else [])),
        f"interrupted: {kept}",
        code=130,
        prefix="",
    )


@pytest.mark.parametrize("given_as", ["MODEL", "--target", "--drafter"])
def test_a_file_given_as_model_is_not_no_such_folder(tmp_path, given_as):
    f = tmp_path / "model.safetensors"
    f.write_bytes(b"weights")
    if given_as == "MODEL":  # MODEL may also be a model name: the CLI resolves it first
        args, message = generate_args(f), f"{f} is a file; pass a bundle folder or a model name (see `specdec models`)"
    else:
        folders = {"--target": TARGET, "--drafter": DRAFTER, given_as: f}
        args = ["generate", "--target", folders["--target"], "--drafter", folders["--drafter"], "--prompt-ids", "2"]
        message = f"{f}: is a file, not a model folder; pass the folder that holds config.json"
    fails(tmp_path, args, message, code=2)


# --- the umask -------------------------------------------------------------------------------
def test_bundle_folders_and_files_follow_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        r = cli(*convert_args(tmp_path / "b"))
    finally:
        os.umask(old)
    assert r.code == 0 and not r.escaped, r.stderr
    made = [tmp_path / "b", *(tmp_path / "b").rglob("*")]
    assert {p.stat().st_mode & 0o777 for p in made if p.is_dir()} == {0o750}
    assert {p.stat().st_mode & 0o777 for p in made if p.is_file()} == {0o640}
