"""Bad model folders give one line naming the file and the problem."""

import json
import shutil

import pytest

from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load, load_drafter, load_target

from .helpers.paths import DRAFTERS, TARGET


@pytest.fixture
def tmp_target(tmp_path):
    dst = tmp_path / "target"
    shutil.copytree(TARGET, dst)
    return dst


@pytest.fixture
def tmp_drafter(tmp_path):
    dst = tmp_path / "drafter"
    shutil.copytree(DRAFTERS["dense"], dst)
    return dst


def one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


def edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for k, v in changes.items():
        if v is None:
            cfg.pop(k, None)
        else:
            cfg[k] = v
    (folder / "config.json").write_text(json.dumps(cfg))


def test_missing_safetensors_names_the_folder(tmp_target):
    (tmp_target / "model.safetensors").unlink()
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    assert one_line(e) == f"{tmp_target}: no .safetensors weights found"


def test_truncated_safetensors_names_the_file(tmp_target):
    f = tmp_target / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    msg = one_line(e)
    assert msg.startswith(f"{f}: truncated (") and msg.endswith("re-download or re-convert it")


def test_pickle_only_checkpoint_is_refused(tmp_target):
    (tmp_target / "model.safetensors").unlink()
    (tmp_target / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    assert "unpickling can run arbitrary code" in one_line(e)


def test_missing_config_key_is_named(tmp_target):
    edit_config(tmp_target, hidden_size=None)
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    assert one_line(e) == f"{tmp_target / 'config.json'}: missing config key 'hidden_size'"


def test_unsupported_model_type_is_named(tmp_target):
    edit_config(tmp_target, model_type="llama")
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    assert one_line(e) == (
        f"{tmp_target / 'config.json'}: unsupported model_type 'llama': "
        "expected a Gemma 4 target ('gemma4_text', 'gemma4_unified_text', 'gemma4' or 'gemma4_unified')"
    )


def test_target_given_as_drafter_is_refused(tmp_target):
    with pytest.raises(SpecdecError) as e:
        load_drafter(tmp_target)
    assert "expected a Gemma 4 drafter ('gemma4_assistant' or 'gemma4_unified_assistant')" in one_line(e)


@pytest.mark.parametrize(
    "change, what",
    [
        ({"backbone_hidden_size": 128}, "backbone width is 128, the target's is 64"),
        ({"text_config.vocab_size": 1024}, "vocabulary size is 1024, the target's is 512"),
        ({"text_config.head_dim": 16}, "head_dim is 16, the target's is 32"),
        ({"text_config.global_head_dim": 128}, "global_head_dim is 128, the target's is 64"),
    ],
)
def test_drafter_that_does_not_fit_target_is_refused(tmp_drafter, change, what):
    cfg = json.loads((tmp_drafter / "config.json").read_text())
    for key, value in change.items():
        if key.startswith("text_config."):
            cfg["text_config"][key.split(".", 1)[1]] = value
        else:
            cfg[key] = value
    (tmp_drafter / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(SpecdecError) as e:
        load(target=TARGET, drafter=tmp_drafter)
    assert one_line(e) == f"{tmp_drafter}: does not fit the target: {what}; use the assistant made for this target"


def test_weights_that_do_not_match_config_name_the_folder(tmp_target):
    edit_config(tmp_target, intermediate_size=48)
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_target)
    assert one_line(e).startswith(f"{tmp_target}: weights do not match config.json (")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(SpecdecError) as e:
        load_target(tmp_path / "nope")
    assert one_line(e) == f"{tmp_path / 'nope'}: no such folder"
