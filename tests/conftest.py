"""Shared fixtures: the tiny real Gemma 4 checkpoints under tests/fixtures/ (see its README)."""

import os
from pathlib import Path

import mlx.core as mx
import pytest

# Tests never reach a hub: anything that tried would fail at once instead of touching the network.
os.environ["HF_HUB_OFFLINE"] = "1"

FIXTURES = Path(__file__).parent / "fixtures"
TARGET = FIXTURES / "target_text"
TARGET_MM = FIXTURES / "target_mm"
DRAFTERS = {"dense": FIXTURES / "drafter_dense", "centroid": FIXTURES / "drafter_centroid"}


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
