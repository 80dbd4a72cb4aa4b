"""Synthetic bundles and the oracle drafter (synthetic.py) and the synthetic bench (bench_synthetic.py)."""

import dataclasses
import json

import mlx.core as mx
import pytest

from mlx_specdec.bench import synthetic
from mlx_specdec.bench import synthetic_run as bench_synthetic
from mlx_specdec.cache import drafter_kv, make_target_cache
from mlx_specdec.decode import generate, stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.models import quantise
from mlx_specdec.models.target import make_model, text_config
from mlx_specdec.settings import GenerationSettings

from .helpers.paths import DRAFTERS, TARGET


def tiny_config(**target_overrides) -> dict:
    """The fixture pair's shapes (10-layer E2B-like target, centroid drafter) as one synthetic config."""
    target = json.loads((TARGET / "config.json").read_text())
    target.update(target_overrides)
    return {"target": target, "drafter": json.loads((DRAFTERS["centroid"] / "config.json").read_text())}


@pytest.fixture(scope="module")
def tiny():
    """(bundle, prompt ids, plain tokens, real drafter): float32 so greedy has no near-ties to flip."""
    bundle = synthetic.synthetic_bundle(tiny_config(), bits=4, group_size=32, dtype=mx.float32)
    ids = synthetic.random_prompt(bundle.target.vocab_size, 12, seed=3)
    _, plain, _ = generate(bundle, ids, GenerationSettings(max_tokens=60, draft=0))
    return bundle, ids, plain, bundle.drafter


def test_tiny_synthetic_bundle_is_quantised_as_convert_plans_and_runs(tiny):
    bundle, ids, plain, drafter = tiny
    model = bundle.target.model
    plan = quantise.plan(make_model(bundle.target.config), quantise.TARGET_RULES, 4, 32)
    assert plan["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # the rule, not --bits
    assert model.model.embed_tokens.bits == 8
    assert model.model.layers[0].self_attn.q_proj.bits == 4
    assert drafter.pre_projection.bits == 8 and drafter.model.embed_tokens.bits == 4
    assert sorted(drafter.masked_embedding.token_ordering.tolist()) == list(range(512))
    logits, hidden = bundle.target(mx.array(ids)[None], [None] * 10)
    assert bool(mx.isfinite(logits).all()) and bool(mx.isfinite(hidden).all())
    assert len(plain) == 60 and len(set(plain)) > 5  # full length (no EOS), not one repeated token


@pytest.mark.parametrize("rate, expected", [(1.0, 1.0), pytest.param(0.0, 0.0, marks=pytest.mark.slow)])
def test_oracle_gives_exactly_full_and_no_acceptance(tiny, rate, expected):
    bundle, ids, plain, drafter = tiny
    bundle.drafter = synthetic.OracleDrafter(drafter, ids + plain, [rate], seed=0)
    try:
        _, out, stats = generate(bundle, ids, GenerationSettings(max_tokens=60, draft=4))
    finally:
        bundle.drafter = drafter
    assert out == plain
    assert stats.acceptance_rate == expected


@pytest.mark.slow
def test_oracle_hits_per_position_acceptance_within_tolerance_and_output_equals_plain(tiny):
    """~350 rounds, >= 200 tries per position: a binomial rate's std is below 0.036; tolerance 0.1 (~3 sigma).
    (Seeded, so the run is deterministic; the tolerance says how close a correct oracle must come.)"""
    bundle, ids, plain, drafter = tiny
    requested = [0.7, 0.5]
    tried, hits = [0] * 2, [0] * 2
    for seed in range(12):
        bundle.drafter = synthetic.OracleDrafter(drafter, ids + plain, requested, seed=seed)
        try:
            records = list(stream_generate(bundle, ids, GenerationSettings(max_tokens=60, draft=2)))
        finally:
            bundle.drafter = drafter
        assert [r.token for r in records] == plain
        for rnd in (r.round_info for r in records if r.round_info is not None):
            for i in range(min(rnd.k, rnd.accepted + 1)):
                tried[i] += 1
                hits[i] += i < rnd.accepted
    assert tried[1] >= 200
    for want, t, h in zip(requested, tried, hits):
        assert abs(h / t - want) < 0.1, (requested, tried, hits)


def test_oracle_output_is_computed_from_the_real_drafter_logits(tiny):
    """The drafter's cost is paid: its logits are an input of the forced ones (a NaN there reaches them)."""
    bundle, ids, plain, drafter = tiny
    poison = []

    class Poisoned:
        vocab_size = drafter.vocab_size

        def __call__(self, *args):
            logits, h = drafter(*args)
            return (logits + float("nan") if poison else logits), h

    cache = make_target_cache(bundle.target.config)
    _, h = bundle.target(mx.array(ids)[None], cache)
    kv = drafter_kv(cache, bundle.target.kv_layers)
    x = bundle.target.embed(mx.array([[plain[0]]]))
    forced, _ = synthetic.OracleDrafter(Poisoned(), ids + plain, [1.0])(x, h[:, -1:], kv, len(ids))
    assert int(mx.argmax(forced[0, -1]).item()) == plain[1]  # draft 1 of the round at p proposes seq[p + 1]
    poison.append(True)
    forced, _ = synthetic.OracleDrafter(Poisoned(), ids + plain, [1.0])(x, h[:, -1:], kv, len(ids))
    assert bool(mx.isnan(forced).all())


def test_build_never_holds_a_large_tensor_in_full_precision():
    """A tiny config with one oversize per-layer embedding: peak memory stays below its float32 copy."""
    cfg = tiny_config()
    cfg["target"]["hidden_size_per_layer_input"] = 1024  # PLE [512, 10 x 1024]: 20 MiB in float32
    old = synthetic.BLOCK_BYTES
    synthetic.BLOCK_BYTES = 1 << 20
    try:
        bundle, report = synthetic.build(cfg, bits=4, group_size=32, dtype=mx.float32)
    finally:
        synthetic.BLOCK_BYTES = old
    ple = bundle.target.model.model.embed_tokens_per_layer
    float_bytes = 512 * 10 * 1024 * 4
    assert ple.bits == 4 and ple.weight.shape == (512, 10 * 1024 * 4 // 32)
    assert report.peak_memory_bytes < float_bytes  # the whole model, built, is smaller than that copy
    assert report.peak_memory_bytes < report.target_bytes + report.drafter_bytes + 3 * (1 << 20)


def test_family_configs_are_the_published_shapes():
    e2b = synthetic.family_config("e2b")
    t = text_config(e2b["target"])
    assert (t["hidden_size"], t["num_hidden_layers"], t["num_kv_shared_layers"], t["global_head_dim"]) == (
        1536,
        35,
        20,
        512,
    )
    assert t["layer_types"][:5] == ["sliding_attention"] * 4 + ["full_attention"]
    assert synthetic.family_config("31b")["target"]["attention_k_eq_v"] is True
    assert synthetic.family_config("26b-a4b")["target"]["num_experts"] == 128
    with pytest.raises(SpecdecError, match="--synthetic must be one of e2b, e4b, 12b, 26b-a4b, 31b"):
        synthetic.family_config("7b")


def test_parse_acceptance_rejects_rates_outside_0_1():
    assert synthetic.parse_acceptance("0.92, 0.79,0.68,0.59") == [0.92, 0.79, 0.68, 0.59]
    with pytest.raises(SpecdecError, match="--acceptance must be rates in 0..1"):
        synthetic.parse_acceptance("1.2")


@pytest.mark.slow
def test_synthetic_bench_json_has_the_documented_fields(tmp_path):
    from mlx_specdec.bench import report as bench_report
    from mlx_specdec.bench import synthetic_report as bench_synthetic_report
    from mlx_specdec.bench.result import ModeResult

    result = bench_synthetic.run_synthetic(
        tiny_config(),
        bits=4,
        group_size=32,
        acceptance=[0.9, 0.5],
        ks=[2],
        auto=False,
        max_tokens=12,
        prompt_tokens=8,
        trials=1,
        dtype=mx.float32,
    )
    bench_report.write_json(result, tmp_path / "r.json")
    doc = json.loads((tmp_path / "r.json").read_text())
    assert [m["mode"] for m in doc["modes"]] == ["plain", "k=2"]
    mode_fields = [f.name for f in dataclasses.fields(bench_synthetic.SyntheticMode)]
    assert [f.name for f in dataclasses.fields(ModeResult)] == mode_fields[: len(dataclasses.fields(ModeResult))]
    for m in doc["modes"]:
        assert list(m) == mode_fields and m["matches_plain"] is True
    k2 = doc["modes"][1]
    assert k2["verify_cost_vs_plain"] > 0 and k2["draft_step_cost_vs_plain"] > 0 and k2["ideal_speedup"] > 0
    assert k2["host_wait_s_per_round"] >= 0 and 0 <= k2["host_wait_fraction"] <= 1
    assert list(doc["synthetic"]) == [f.name for f in dataclasses.fields(bench_synthetic.SyntheticInfo)]
    s = doc["synthetic"]
    assert s["acceptance"] == [0.9, 0.5] and len(s["costs"]["verify_s"]) == 3 and s["costs"]["draft_step_s"] > 0
    assert doc["schema"] == "specdec-bench/1" and "auto_vs_ideal" in doc["summary"]
    bench_synthetic_report.write_plot([result, doc], tmp_path / "p.png")  # a result or its JSON document
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "cls",
    [
        bench_synthetic.SyntheticMode,
        bench_synthetic.SyntheticSummary,
        bench_synthetic.SyntheticResult,
        bench_synthetic.SyntheticInfo,
        bench_synthetic.Costs,
    ],
)
def test_every_synthetic_field_is_described_in_its_docstring(cls):
    described = set()
    for c in cls.__mro__:
        described |= {line.split(":")[0].strip() for line in (c.__doc__ or "").splitlines() if ":" in line}
    assert [f.name for f in dataclasses.fields(cls) if f.name not in described] == []


def shrunk(name: str) -> dict:
    """A family's config with its structure (layer pattern, KV sharing, PLE, MoE, k_eq_v, head kind) kept
    and every width made tiny: two attention periods, vocabulary 1024."""
    fam = synthetic.family_config(name)
    t, d = fam["target"], fam["drafter"]
    period = t["layer_types"].index("full_attention") + 1
    t.update(
        hidden_size=128,
        intermediate_size=256,
        vocab_size=1024,
        head_dim=32,
        global_head_dim=64,
        sliding_window=16,
        layer_types=t["layer_types"][: 2 * period],
        num_hidden_layers=2 * period,
    )
    if t["num_kv_shared_layers"]:
        t["num_kv_shared_layers"] = period
    if t["hidden_size_per_layer_input"]:
        t.update(hidden_size_per_layer_input=16, vocab_size_per_layer_input=1024)
    if t["enable_moe_block"]:
        t.update(num_experts=8, top_k_experts=2, moe_intermediate_size=64)
    d["text_config"].update(
        vocab_size=1024, head_dim=32, global_head_dim=64, hidden_size=64, intermediate_size=128, sliding_window=16
    )
    d.update(backbone_hidden_size=128, num_centroids=32, centroid_intermediate_top_k=4)
    return fam


@pytest.mark.parametrize(
    "name", ["e2b", *(pytest.param(n, marks=pytest.mark.slow) for n in ("e4b", "12b", "26b-a4b", "31b"))]
)
def test_every_family_structure_builds_and_decodes_exactly_with_the_oracle(name):
    bundle = synthetic.synthetic_bundle(shrunk(name), bits=4, group_size=32, dtype=mx.float32)
    ids = synthetic.random_prompt(1024, 10)
    _, plain, _ = generate(bundle, ids, GenerationSettings(max_tokens=24, draft=0))
    bundle.drafter = synthetic.OracleDrafter(bundle.drafter, ids + plain, [0.7])
    _, out, stats = generate(bundle, ids, GenerationSettings(max_tokens=24, draft=3))
    assert out == plain and 0 < stats.acceptance_rate < 1


@pytest.mark.slow
def test_cli_bench_synthetic_writes_the_json_and_refuses_synthetic_options_without_it(tmp_path):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps(tiny_config()))
    out = tmp_path / "r.json"
    res = CliRunner().invoke(
        app,
        [
            "bench",
            "--synthetic",
            str(config),
            "--acceptance",
            "1",
            "--k",
            "2",
            "--no-auto",
            "--max-tokens",
            "8",
            "--prompt-tokens",
            "4",
            "--trials",
            "1",
            "--json",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert [e["mode"] for e in result["modes"]] == ["plain", "k=2"]
    assert result["modes"][1]["acceptance_by_position"][:2] == [1.0, 1.0]
    res = CliRunner().invoke(app, ["bench", "--demo", "--acceptance", "0.5"])
    assert res.exit_code == 2
    assert "error: --acceptance, --no-auto, --bits and --prompt-tokens need --synthetic NAME" in res.output
    res = CliRunner().invoke(app, ["bench", "--synthetic", "e2b", "--demo"])
    assert res.exit_code == 2 and "not both" in res.output


def test_device_bench_refuses_without_a_gpu_in_one_line_and_dry_runs(tmp_path):
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "scripts" / "setup" / "device_bench.sh"
    env = {"PATH": str(tmp_path), "HOME": str(tmp_path)}  # no nvidia-smi on this PATH
    (tmp_path / "nvidia-smi").write_text("#!/bin/sh\nexit 9\n")  # present but failing counts as absent
    (tmp_path / "nvidia-smi").chmod(0o755)
    for tool in ("bash", "dirname", "sed", "head"):
        (tmp_path / tool).symlink_to(shutil.which(tool))
    (tmp_path / "python3").symlink_to(sys.executable)
    res = subprocess.run(
        ["bash", str(script), str(tmp_path / "out")], capture_output=True, text=True, env=env, check=False
    )
    assert res.returncode == 1 and res.stdout == ""
    assert res.stderr.splitlines() == [
        "device_bench.sh: no NVIDIA GPU here (nvidia-smi is missing or fails); run it on a machine with one"
    ]
    res = subprocess.run(
        ["bash", str(script), "--dry-run", str(tmp_path / "out")], capture_output=True, text=True, check=False, env=env
    )
    assert res.returncode == 0, res.stderr
    assert f"'mlx[cuda]=={mx.__version__}'" in res.stdout  # the project's MLX version, CUDA 12 wheels
    assert res.stdout.count("synthetic_sweep.py' --family") == 5 and not (tmp_path / "out").exists()
