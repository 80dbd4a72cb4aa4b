"""`convert` on every published Gemma 4 family (tests/fixtures/families), on already-quantised
(mlx-community style) sources, and its memory bound.

Each family converts at 4/8/16 bits into a bundle that `mlx_lm.load` and ours load with the same
logits; the manifest describes the weights as written; the 4-bit size is what the per-module bits
imply; quantised sources are copied through, never quantised twice; a tensor larger than the
block budget converts without ever being held whole.
"""

import json
import shutil

import mlx.core as mx
import mlx_lm
import pytest

from mlx_specdec.load import load, load_target

from .helpers.convert import convert, copy, logits
from .helpers.paths import TARGET

pytestmark = pytest.mark.slow  # the converter end to end: quick loops skip it (-m 'not slow')

FAMILY_DIR = TARGET.parent / "families"
FAMILIES = ["26b-a4b", "31b", "12b", "e2b"]


@pytest.fixture(scope="module")
def family_bundles(tmp_path_factory):
    """{(family, bits): (path, manifest)} at 4, 8 and 16 bits, group size 32."""
    root = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILIES:
        for bits in (4, 8, 16):
            path = root / f"{family}-{bits}"
            src = FAMILY_DIR / family
            out[family, bits] = (
                path,
                convert(path, target=src / "target", drafter=src / "assistant", bits=bits, group_size=32),
            )
    return out


def check_manifest_describes_the_weights(folder, per_module):
    """Every module the manifest lists is written as it says (packed at its bits, or floats), and no
    tensor is quantised without an entry."""
    weights = {}
    for f in folder.glob("*.safetensors"):
        weights.update(mx.load(str(f)))
    for module, params in per_module.items():
        w = weights[f"{module}.weight"]
        if params:
            cols = weights[f"{module}.scales"].shape[-1] * params["group_size"]
            assert w.dtype == mx.uint32 and w.shape[-1] * 32 == cols * params["bits"], module
        else:
            assert f"{module}.scales" not in weights and mx.issubdtype(w.dtype, mx.floating), module
    assert {k.removesuffix(".scales") for k in weights if k.endswith(".scales")} == {
        m for m, p in per_module.items() if p
    }


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_converts_at_4_8_16_bits_and_loads_in_mlx_lm_and_ours(family_bundles, family):
    src = FAMILY_DIR / family
    hf = load(target=src / "target", drafter=src / "assistant")
    for bits in (4, 8, 16):
        path, manifest = family_bundles[family, bits]
        model, _ = mlx_lm.load(str(path / "target"))
        ours = load(path)
        assert mx.array_equal(logits(model), logits(ours.target.model)), bits
        if bits == 16:
            assert mx.array_equal(logits(ours.target.model), logits(hf.target.model))
        hi = [{"role": "user", "content": "hi"}]
        assert ours.tokenizer.apply_chat_template(hi) == hf.tokenizer.apply_chat_template(hi)  # chat_template.jinja
        for part in ("target", "drafter"):
            check_manifest_describes_the_weights(path / part, manifest["quantization"][part])
            cfg = json.loads((path / part / "config.json").read_text())
            assert (cfg.get("quantization") is None) == (bits == 16)


def test_moe_experts_are_split_and_quantised_and_the_router_kept_at_8_bits(family_bundles):
    path, manifest = family_bundles["26b-a4b", 4]
    q = manifest["quantization"]["target"]
    for part in ("gate_proj", "up_proj", "down_proj"):
        assert q[f"model.layers.0.experts.switch_glu.{part}"] == {"group_size": 32, "bits": 4}
    assert q["model.layers.0.router.proj"] == {"group_size": 32, "bits": 8}
    names = set(mx.load(str(path / "target" / "model.safetensors")))
    assert not any("gate_up_proj" in n or n.endswith("experts.down_proj") for n in names)
    assert "model.layers.0.experts.switch_glu.gate_proj.scales" in names
    assert not any(".layers.5.self_attn.v_proj" in n for n in names)  # k_eq_v full layer: V = K


@pytest.mark.parametrize("family", FAMILIES)
def test_4_bit_bundle_size_is_what_the_quantisation_implies(family_bundles, family):
    """Bytes of the 4-bit bundle = from the 16-bit one, per the manifest's per-module bits:
    n * bits/8 packed + 2 * n/group scales and biases in the source dtype; floats unchanged."""
    for part in ("target", "drafter"):
        full = mx.load(str(family_bundles[family, 16][0] / part / "model.safetensors"))
        per_module = family_bundles[family, 4][1]["quantization"][part]
        want = 0
        for name, w in full.items():
            params = per_module.get(name.removesuffix(".weight")) if name.endswith(".weight") else None
            quantised = w.size * params["bits"] // 8 + 2 * w.size // params["group_size"] * w.itemsize if params else 0
            want += quantised or w.nbytes
        got = sum(w.nbytes for w in mx.load(str(family_bundles[family, 4][0] / part / "model.safetensors")).values())
        assert got == want == family_bundles[family, 4][1]["sizes"][part]["bytes"], part
        # f32 sources: 4/32 for the 4-bit modules; the 8-bit head/router/drafter body and norms keep it above
        assert got / sum(w.nbytes for w in full.values()) < (0.45 if part == "target" else 0.6), part


@pytest.fixture(scope="module")
def mlx_community_target(tmp_path_factory):
    """The 26B-A4B fixture quantised by mlx-lm itself (4-bit, its 8-bit router), written the way
    mlx-community repos are: `language_model.model.*` names, per-path entries keyed by them.
    Returns (folder, the quantised mlx-lm model)."""
    from mlx.utils import tree_flatten
    from mlx_lm.utils import quantize_model

    src = FAMILY_DIR / "26b-a4b" / "target"
    model = load_target(src).model
    raw = json.loads((src / "config.json").read_text())
    _, qcfg = quantize_model(model, {}, group_size=32, bits=4)  # mlx-lm's own quant_predicate
    q = {k if not isinstance(v, dict) else f"language_model.{k}": v for k, v in qcfg["quantization"].items()}
    assert q["language_model.model.layers.0.router.proj"]["bits"] == 8
    folder = tmp_path_factory.mktemp("mlx-community") / "gemma-4-26b-a4b-it-4bit"
    folder.mkdir()
    mx.save_safetensors(
        str(folder / "model.safetensors"), {f"language_model.{k}": v for k, v in tree_flatten(model.parameters())}
    )
    (folder / "config.json").write_text(json.dumps({**raw, "quantization": q, "quantization_config": q}))
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
        shutil.copy(src / f, folder / f)
    return folder, model


def test_mlx_community_quantised_target_loads_with_identical_logits(mlx_community_target):
    folder, model = mlx_community_target
    ours = load(target=folder, drafter=FAMILY_DIR / "26b-a4b" / "assistant")
    assert mx.array_equal(logits(ours.target.model), logits(model))


def test_already_quantised_source_is_copied_through_never_quantised_twice(tmp_path, mlx_community_target):
    folder, model = mlx_community_target
    manifest = convert(
        tmp_path / "b", target=folder, drafter=FAMILY_DIR / "26b-a4b" / "assistant", bits=4, group_size=32
    )
    q = manifest["quantization"]["target"]
    assert q["model.layers.0.router.proj"] == {"group_size": 64, "bits": 8}  # mlx-lm's, kept
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 4}  # as the source has it, not re-made at 8
    src = mx.load(str(folder / "model.safetensors"))
    out = mx.load(str(tmp_path / "b" / "target" / "model.safetensors"))
    assert manifest["quantization"]["copied_quantised"]["target"] == sum(k.endswith(".scales") for k in src)
    assert all(mx.array_equal(out[k.removeprefix("language_model.")], v) for k, v in src.items())
    check_manifest_describes_the_weights(tmp_path / "b" / "target", q)
    assert mx.array_equal(logits(load(tmp_path / "b").target.model), logits(model))
    assert mx.array_equal(logits(mlx_lm.load(str(tmp_path / "b" / "target"))[0]), logits(model))


def test_convert_says_in_one_line_that_bits_do_not_apply_to_an_already_quantised_target(tmp_path, mlx_community_target):
    folder, model = mlx_community_target
    lines = []
    manifest = convert(
        tmp_path / "b", target=folder, drafter=FAMILY_DIR / "26b-a4b" / "assistant", bits=8, log=lines.append
    )
    assert [x for x in lines if x.startswith("--bits")] == [
        f"--bits 8 does not apply to {folder}: it is already 4-bit, and its quantised weights are copied as they are"
    ]
    assert manifest["quantization"]["target"]["model.embed_tokens"] == {"group_size": 32, "bits": 4}


PEAK_MEMORY = """
import json, sys
from pathlib import Path
import mlx.core as mx
import weights_convert
from weights_convert import write

write.BLOCK_BYTES = 2 << 20
mx.eval(mx.quantize(mx.zeros((256, 256)), group_size=32, bits=4))  # warm up the allocator and kernels
status = Path("/proc/self/status")

def kb(field):  # Linux: VmRSS (now) / VmHWM (peak since clear_refs)
    line = next(l for l in status.read_text().splitlines() if l.startswith(field))
    return int(line.split()[1])

linux = status.is_file()
if linux:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
    before = kb("VmRSS")
mx.reset_peak_memory()
weights_convert.convert(sys.argv[1], sys.argv[2], sys.argv[3], bits=4, group_size=32)
print(json.dumps({"mlx_peak": mx.get_peak_memory(), "rss_grown": (kb("VmHWM") - before) * 1024 if linux else None}))
"""


def test_convert_peak_memory_stays_bounded_below_the_largest_tensor(tmp_path):
    """A 32 MiB bf16 embedding converts with 2 MiB blocks: mlx's peak memory, and on Linux the
    process's peak RSS, grow by far less than that tensor (whole-tensor conversion needs > 2x it)."""
    import subprocess
    import sys

    vocab = 1 << 18
    src = FAMILY_DIR / "31b"
    for part, key, width in (
        ("target", "model.language_model.embed_tokens.weight", 64),
        ("assistant", "model.embed_tokens.weight", 32),
    ):
        folder = copy(src / part, tmp_path / part)
        weights = mx.load(str(folder / "model.safetensors"))
        weights[key] = (mx.random.normal((vocab, width), key=mx.random.key(0)) * 0.1).astype(mx.bfloat16)
        mx.save_safetensors(str(folder / "model.safetensors"), weights)
        cfg = json.loads((folder / "config.json").read_text())
        cfg["text_config"]["vocab_size"] = vocab
        (folder / "config.json").write_text(json.dumps(cfg))
    largest = vocab * 64 * 2
    out = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY, str(tmp_path / "target"), str(tmp_path / "assistant"), str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=True,
    )
    peak = json.loads(out.stdout.strip().splitlines()[-1])
    assert peak["mlx_peak"] < largest / 4, f"mlx peak {peak['mlx_peak'] / 2**20:.1f} MiB for a 32 MiB tensor"
    if peak["rss_grown"] is not None:
        assert peak["rss_grown"] < largest / 2, f"peak RSS grew {peak['rss_grown'] / 2**20:.1f} MiB"
    bundle = load(tmp_path / "b")
    assert bundle.target.vocab_size == vocab and bundle.target.model.model.embed_tokens.bits == 8


def test_already_quantised_drafter_loads_and_converts_without_requantising(tmp_path):
    """An MLX 4-bit assistant (mlx-lm's config format) loads as it is and is copied through by convert."""
    from mlx.utils import tree_flatten

    from mlx_specdec.load import load_drafter

    src = FAMILY_DIR / "26b-a4b"
    drafter = load_drafter(src / "assistant")
    _, qcfg = mlx_lm.utils.quantize_model(drafter, {}, group_size=32, bits=4)
    folder = copy(src / "assistant", tmp_path / "assistant-4bit")
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(drafter.parameters())))
    raw = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**raw, **qcfg}))
    assert load_drafter(folder).pre_projection.bits == 4
    manifest = convert(tmp_path / "b", target=src / "target", drafter=folder, bits=8, group_size=32)
    assert manifest["quantization"]["drafter"]["pre_projection"] == {"group_size": 32, "bits": 4}  # not 8
    src_w = mx.load(str(folder / "model.safetensors"))
    out_w = mx.load(str(tmp_path / "b" / "drafter" / "model.safetensors"))
    assert sorted(src_w) == sorted(out_w) and all(mx.array_equal(src_w[k], out_w[k]) for k in src_w)
