"""registry: name resolution, and bundle sizes computed the way convert writes them."""

import json

import pytest

import weights_convert
from mlx_specdec import registry
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import read_config

from .helpers.paths import DRAFTERS, TARGET


@pytest.mark.parametrize(
    "name, short",
    [
        ("e2b", "e2b"),
        ("E2B", "e2b"),
        ("gemma-4-E2B-it", "e2b"),
        ("gemma-4-e2b", "e2b"),
        ("google/gemma-4-E2B-it", "e2b"),
        ("google/gemma-4-e2b-it-assistant", "e2b"),
        ("mlx-community/gemma-4-e2b-it-4bit", "e2b"),
        ("https://huggingface.co/google/gemma-4-E4B-it", "e4b"),
        ("12b", "12b"),
        ("gemma-4-12B-it", "12b"),
        ("26b", "26b-a4b"),
        ("gemma-4-26b-a4b", "26b-a4b"),
        ("Gemma-4-26B-A4B-it", "26b-a4b"),
        ("31b", "31b"),
        ("google/gemma-4-31B-it-assistant", "31b"),
        ("e2b-qat", "e2b-qat"),
        ("google/gemma-4-E2B-it-qat-q4_0-unquantized", "e2b-qat"),
        ("google/gemma-4-E2B-it-qat-q4_0-unquantized-assistant", "e2b-qat"),
        ("gemma-4-31b-qat", "31b-qat"),
        ("mlx-community/gemma-4-E2B-it-assistant-bf16", "e2b"),
        ("mlx-community/gemma-4-31b-it-assistant-bf16", "31b"),
    ],
)
def test_resolve_accepts_short_names_aliases_hub_ids_and_mlx_repos(name, short):
    assert registry.resolve(name).name == short


def test_mlx_source_is_the_mlx_community_target_a_name_is_and_none_for_others():
    assert registry.mlx_source("MLX-community/Gemma-4-E4B-it-4bit") == "mlx-community/gemma-4-e4b-it-4bit"
    assert registry.mlx_source("https://huggingface.co/mlx-community/gemma-4-26b-a4b-it-4bit/") == (
        "mlx-community/gemma-4-26b-a4b-it-4bit"
    )
    for name in ("e2b", "google/gemma-4-E2B-it", "mlx-community/gemma-4-E2B-it-assistant-bf16"):
        assert registry.mlx_source(name) is None, name


def test_repo_bits_reads_the_name_and_refuses_a_name_that_states_none():
    assert [registry.repo_bits(r) for r in ("x/a-4bit", "x/a-8BIT", "x/a-bf16")] == [4, 8, 16]
    with pytest.raises(SpecdecError, match=r"^x/a-it: the name does not say how it is quantised"):
        registry.repo_bits("x/a-it")


def test_mlx_bundle_name_differs_from_the_google_one_ignoring_case():
    for pair in registry.PAIRS:
        for repo in pair.mlx_repos:
            assert registry.mlx_bundle_name(repo).lower() != pair.bundle_name(registry.repo_bits(repo)).lower()
    assert registry.mlx_bundle_name("mlx-community/gemma-4-e2b-it-4bit") == "gemma-4-e2b-it-4bit-mlx-community"


def test_resolve_unknown_name_is_one_line_with_the_known_names():
    with pytest.raises(SpecdecError) as e:
        registry.resolve("gemma-3-27b")
    known = ", ".join(p.name for p in registry.PAIRS)
    assert (
        str(e.value) == f"unknown model 'gemma-3-27b': known names are {known} (or their hub ids); "
        "a folder path also works"
    )


def test_every_name_resolves_to_one_pair_only():
    seen = {}
    for pair in registry.PAIRS:
        for name in pair.names():
            assert seen.setdefault(name.lower(), pair.name) == pair.name, name


def test_pairs_follow_the_hub_naming():
    for pair in registry.PAIRS:
        assert pair.drafter == pair.target + "-assistant"
        assert pair.target.startswith("google/gemma-4-")
        assert pair.target.endswith("-qat-q4_0-unquantized") == pair.qat
    assert registry.resolve("e2b").bundle_name(4) == "gemma-4-E2B-it-4bit"  # the default bundle's folder


def test_shapes_give_the_published_parameter_counts():
    # text model + drafter parameters, from the shapes alone (model cards: 30.7B, 25.2B, 11.95B with towers)
    billions = {p.name: registry.bundle_bytes(p, 16)[0] / 2 / 1e9 for p in registry.PAIRS if not p.qat}
    assert billions["31b"] == pytest.approx(30.7, abs=0.05)
    assert billions["26b-a4b"] == pytest.approx(25.2, abs=0.1)
    assert billions["12b"] == pytest.approx(11.9, abs=0.1)
    assert billions["e4b"] == pytest.approx(7.5, abs=0.1)  # with its 2.8B per-layer embeddings
    assert billions["e2b"] == pytest.approx(4.6, abs=0.1)  # with its 2.3B per-layer embeddings


def test_4bit_bundle_is_about_a_quarter_of_bf16_plus_the_8bit_head():
    for pair in registry.PAIRS:
        t4, _ = registry.bundle_bytes(pair, 4)
        t16, _ = registry.bundle_bytes(pair, 16)
        embed = 262144 * pair.text.hidden * 2  # bf16 bytes of the tied embedding/head, kept at >= 8 bits
        # 4 bits + a bf16 scale and bias per 64 weights = 0.28125 of bf16; the head at 8 bits: 0.53125
        expected = (t16 - embed) * 0.28125 + embed * 0.53125
        assert t4 == pytest.approx(expected, rel=0.002), pair.name


@pytest.mark.parametrize("bits", [4, 8])
def test_computed_bundle_bytes_equal_what_convert_writes(tmp_path, bits):
    # The tiny fixture pair is float32: itemsize 4. Same rules, same shapes -> the same bytes.
    out = tmp_path / "bundle"
    manifest = weights_convert.convert(str(TARGET), str(DRAFTERS["centroid"]), out, bits=bits, group_size=32)
    target, drafter = registry.config_bytes(
        read_config(TARGET), read_config(DRAFTERS["centroid"]), bits, group_size=32, itemsize=4
    )
    assert (target, drafter) == (manifest["sizes"]["target"]["bytes"], manifest["sizes"]["drafter"]["bytes"])
    assert json.loads((out / "manifest.json").read_text())["quantization"]["bits"] == bits


def test_readme_pairs_table_is_what_the_registry_generates():
    import importlib.util
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    spec = importlib.util.spec_from_file_location("pairs_table", root / "scripts" / "measure" / "pairs_table.py")
    pairs_table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pairs_table)
    readme = (root / "README.md").read_text()
    stale = "README pairs table is stale: run python scripts/measure/pairs_table.py --write README.md"
    assert pairs_table.table() in readme, stale
