"""Shared fixtures: the tiny real Gemma 4 checkpoints under tests/fixtures/ (see its README), and
an offline hub for every test. Plain helpers (paths, fakes, checks) live in tests/helpers/."""

import huggingface_hub.constants
import mlx.core as mx
import pytest

from .helpers.paths import DRAFTERS, FIXTURES, TARGET


@pytest.fixture(scope="session", autouse=True)
def offline_hub():
    """Tests never reach a hub: anything that tried would fail at once instead of touching the network.
    Session-wide (so module fixtures that start servers inherit it) and undone at the end."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")  # for subprocesses, and code that reads the environment
        mp.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
        yield


@pytest.fixture(scope="session", autouse=True)
def cache_folder(tmp_path_factory):
    """The cache folder (converted bundles, measured verdicts) is the session's own, never the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLX_SPECDEC_CACHE", str(tmp_path_factory.mktemp("specdec-cache")))
        yield


@pytest.fixture(scope="session")
def reference():
    return mx.load(str(FIXTURES / "reference.safetensors"))


@pytest.fixture(scope="session")
def bundles():
    """{"dense": Bundle, "centroid": Bundle}, EOS disabled so runs go the full length."""
    from mlx_specdec.load import load

    out = {}
    for name, folder in DRAFTERS.items():
        b = load(target=TARGET, drafter=folder)
        b.tokenizer.eos_token_ids = []
        out[name] = b
    return out
