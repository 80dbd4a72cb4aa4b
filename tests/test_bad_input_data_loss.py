"""Nothing the user had is lost: converts into one folder exclude each other, no output replaces
one of the run's inputs, a killed or terminated convert leaves nothing behind (and a later one
removes what a killed one left), `--force` never deletes a file the bundle's manifest does not
list, and a bad `/save` path is one error line in a chat that goes on.

The CLI runs in-process (typer's CliRunner); `fails` asserts the one line, the exit status and
that every file under the test's folder is as it was.
"""

import fcntl
import json
import os
import signal
import socket
import subprocess

import pytest

from mlx_specdec.chat.session import ChatSession

from .helpers.bad_input import bundle, cli, convert_args, convert_module, fails, tree
from .helpers.paths import DRAFTERS, TARGET

DRAFTER = DRAFTERS["dense"]


# --- two converts into one folder ---------------------------------------------------------
def test_a_convert_into_a_folder_another_convert_is_writing_fails_at_once_and_touches_nothing(tmp_path):
    out = tmp_path / "b"
    lock = tmp_path / ".b.lock"
    with open(lock, "w") as held:  # what the first convert holds while it writes
        fcntl.flock(held, fcntl.LOCK_EX)
        fails(
            tmp_path,
            convert_args(out),
            f"another `specdec convert` is writing {out}; wait for it to finish or choose another -o",
        )


def test_a_bundle_that_appears_while_a_convert_runs_is_left_alone_not_replaced(tmp_path, monkeypatch):
    out = tmp_path / "b"
    real = convert_module._check_loadable

    def other_convert_finishes(folder):  # a writer that took no lock finishes first
        real(folder)
        out.mkdir()
        (out / "theirs.txt").write_text("the other convert's bundle")

    monkeypatch.setattr(convert_module, "_check_loadable", other_convert_finishes)
    r = cli(*convert_args(out))
    assert (r.code, r.stderr.splitlines()[-1]) == (
        1,
        f"error: another convert wrote {out} while this one ran; left it as it is (--force replaces it)",
    )
    assert tree(tmp_path) == {"b": "dir", "b/theirs.txt": tree(out)["theirs.txt"]}


def test_a_convert_leaves_no_lock_file_and_removes_parent_folders_it_made_when_it_fails(tmp_path):
    r = cli(*convert_args(tmp_path / "new" / "deeper" / "b", TARGET, TARGET))  # a target is no drafter
    assert r.code == 1 and not r.escaped
    assert list(tmp_path.iterdir()) == []
    assert cli(*convert_args(tmp_path / "ok" / "b")).code == 0
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["b"]


# --- no output replaces an input ------------------------------------------------------------
@pytest.mark.parametrize("relation", ["is", "holds"])
def test_convert_output_that_is_or_holds_an_input_folder_is_a_usage_error(tmp_path, relation):
    b = bundle(tmp_path / "b", bits=16)
    target = b if relation == "is" else b / "target"
    fails(
        tmp_path,
        convert_args(b, target, DRAFTER, "--force"),
        f"-o {b} {relation} --target {target}: writing it would replace what this run reads; choose another -o",
        code=2,
    )


@pytest.mark.parametrize("option", ["--json", "--plot"])
def test_bench_output_that_is_the_prompts_file_is_a_usage_error_before_anything_is_written(tmp_path, option):
    prompts = tmp_path / "suite.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    fails(
        tmp_path,
        ["bench", "--demo", "--prompts", prompts, option, prompts],
        f"{option} {prompts} is --prompts {prompts}: writing it would replace what this run reads; "
        f"choose another {option}",
        code=2,
    )


def test_bench_output_that_is_a_hard_link_to_the_prompts_file_is_refused_too(tmp_path):
    prompts = tmp_path / "suite.jsonl"
    prompts.write_text('{"prompt": "hello"}\n')
    os.link(prompts, tmp_path / "alias.json")
    r = cli("bench", "--demo", "--prompts", prompts, "--json", tmp_path / "alias.json")
    assert r.code == 2 and "writing it would replace what this run reads" in r.stderr


# --- terminated and killed converts -----------------------------------------------------------
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_sigterm_or_sighup_during_convert_removes_the_partial_folder_and_exits_128_plus_signal(
    tmp_path, monkeypatch, signum
):
    before = signal.getsignal(signum)
    monkeypatch.setattr(
        convert_module.write, "quantise", lambda *a, **k: os.kill(os.getpid(), signum)
    )  # the signal arrives mid-write
    out = tmp_path / "b"
    fails(tmp_path, convert_args(out), f"interrupted: nothing was written to {out}", code=128 + signum, prefix="")
    assert signal.getsignal(signum) == before  # the handler is the convert's only while it runs


def _partial(parent, name, owner):
    folder = parent / name
    (folder / "target").mkdir(parents=True)
    (folder / "target" / "model.safetensors").write_bytes(b"half")
    if owner is not None:
        (folder / "CONVERTING").write_text(json.dumps(owner))
    return folder


def test_a_later_convert_removes_partial_folders_of_killed_converts_and_only_those(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process
    host = socket.gethostname()
    dead = _partial(tmp_path, ".b.dead1.partial", {"pid": gone.pid, "host": host})
    live = _partial(tmp_path, ".b.live1.partial", {"pid": os.getpid(), "host": host})
    unmarked = _partial(tmp_path, ".b.what1.partial", None)
    other_host = _partial(tmp_path, ".b.away1.partial", {"pid": gone.pid, "host": host + "-elsewhere"})
    other_output = _partial(tmp_path, ".c.dead1.partial", {"pid": gone.pid, "host": host})
    r = cli(*convert_args(tmp_path / "b"))
    assert r.code == 0, r.stderr
    assert f"removed {dead}, left by a convert that was killed (pid {gone.pid})" in r.stderr
    assert not dead.exists()
    assert all(p.is_dir() for p in (live, unmarked, other_host, other_output))


def test_a_finished_bundle_holds_no_marker_and_its_manifest_lists_every_file(tmp_path):
    out = bundle(tmp_path / "b")
    files = json.loads((out / "manifest.json").read_text())["files"]
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert "CONVERTING" not in on_disk
    assert sorted([*files, "manifest.json"]) == on_disk


# --- --force and the user's own files ---------------------------------------------------------
@pytest.mark.parametrize("manifest_lists_files", [True, False])
def test_force_refuses_a_bundle_holding_files_its_manifest_does_not_list_and_names_them(tmp_path, manifest_lists_files):
    out = bundle(tmp_path / "b", bits=16)
    if not manifest_lists_files:  # a bundle written before manifests listed their files
        manifest = json.loads((out / "manifest.json").read_text())
        del manifest["files"]
        (out / "manifest.json").write_text(json.dumps(manifest))
    (out / "notes.txt").write_text("mine")
    (out / "target" / "eval.py").write_text("mine too")
    fails(
        tmp_path,
        convert_args(out, TARGET, DRAFTER, "--force"),
        f"{out} holds files its manifest.json does not list (notes.txt, target/eval.py); refusing to replace it, "
        "move them out or choose another -o",
    )


def test_force_still_replaces_an_untouched_bundle_written_before_manifests_listed_files(tmp_path):
    out = bundle(tmp_path / "b", bits=16)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["files"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    r = cli(*convert_args(out, TARGET, DRAFTER, "--force", "--bits", "8"))
    assert r.code == 0, r.stderr
    assert json.loads((out / "manifest.json").read_text())["quantization"]["bits"] == 8


# --- chat /save to a path that cannot be ------------------------------------------------------
@pytest.fixture(scope="module")
def session():
    from mlx_specdec.load import load

    return ChatSession(load(target=TARGET, drafter=DRAFTER))


@pytest.mark.parametrize(
    "path, message",
    [
        ("~nosuchuser-specdec/x.json", "there is no user 'nosuchuser-specdec' on this machine"),
        ("x" * 300 + ".json", "is 305 bytes long, more than the 255 this file system allows"),
        ("a\0b.json", "a path cannot hold a NUL byte"),
    ],
)
def test_save_to_a_bad_path_is_an_error_line_and_the_chat_goes_on(session, path, message):
    action = session.command(f"/save {path}")
    assert action.error and not action.quit and message in action.message and "\n" not in action.message
    assert not session.command("/temp 0.5").error  # still answering commands


def test_save_into_a_missing_folder_is_an_error_line(session, tmp_path):
    action = session.command(f"/save {tmp_path / 'no' / 'x.json'}")
    assert action.error and "cannot write" in action.message
