"""The bad-input tests' command runner: run the CLI in process (typer's CliRunner), assert one
error line and exit status, and check that no file under the test's folder changed (`tree`)."""

import hashlib
import importlib
import json
import os
from pathlib import Path
from types import SimpleNamespace

from typer.testing import CliRunner

import weights_convert
from mlx_specdec.cli import app

from .paths import DRAFTERS, TARGET

convert_module = importlib.import_module("weights_convert.convert")  # the package re-exports a function of that name
DRAFTER = DRAFTERS["dense"]


def tree(root: Path) -> dict:
    """{relative path: sha256 of a file, "dir" of a folder, "link -> target", "special"} for everything under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(os.fsencode(root)):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            rel = os.fsdecode(os.path.relpath(path, os.fsencode(root)))
            if os.path.islink(path):
                out[rel] = f"link -> {os.fsdecode(os.readlink(path))}"
            elif os.path.isdir(path):
                out[rel] = "dir"
            elif not os.path.isfile(path):  # a FIFO or device: reading it could block
                out[rel] = "special"
            else:
                with open(path, "rb") as f:
                    out[rel] = hashlib.sha256(f.read()).hexdigest()
    return out


def cli(*args) -> SimpleNamespace:
    result = CliRunner().invoke(app, [str(a) for a in args])
    escaped = result.exception is not None and not isinstance(result.exception, SystemExit)
    return SimpleNamespace(code=result.exit_code, stderr=result.stderr, stdout=result.stdout, escaped=escaped)


def fails(root: Path, args: list, message: str, code: int = 1, prefix: str = "error: ") -> None:
    """The command fails with the one line `prefix + message` (after convert's progress lines, if any)
    and leaves every file under root as it was."""
    before = tree(root)
    r = cli(*args)
    assert not r.escaped, "an exception escaped the command (a traceback for a user)"
    *progress, last = r.stderr.splitlines() or [""]
    assert (r.code, last) == (code, prefix + message)
    assert all(line.startswith(("writing ", "downloading ")) for line in progress), r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert tree(root) == before


def convert_args(out, target=TARGET, drafter=DRAFTER, *extra):
    return ["convert", "--target", target, "--drafter", drafter, "-o", out, *extra]


def generate_args(model):
    return ["generate", model, "--prompt-ids", "2,5", "-m", "1"]


def bundle(path: Path, **kw) -> Path:
    weights_convert.convert(str(TARGET), str(DRAFTER), path, **kw)
    return path


def set_config(folder: Path, key: str, value) -> None:
    cfg = json.loads((folder / "config.json").read_text())
    cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))
