"""`specdec convert`: fixture checkpoints -> bundles that load in mlx-lm and mlx-specdec.

Every bad input gives one exact line and leaves no output folder (nor a temporary one) behind.
The hub is faked (`FakeHub` replaces the `snapshot_download` that `weights_convert.fetch` calls);
no test touches the network.
"""

import hashlib
import json
import re
import shutil
from types import SimpleNamespace

import mlx.core as mx
import mlx_lm
import pytest
from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError
from typer.testing import CliRunner

import weights_convert
from mlx_specdec.cli import app
from mlx_specdec.decode import generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load, load_target
from mlx_specdec.settings import GenerationSettings
from weights_convert import fetch, write

from .helpers.convert import PROMPT, FakeHub, convert, copy, http_error, logits
from .helpers.paths import DRAFTERS, TARGET, TARGET_MM

pytestmark = pytest.mark.slow  # the converter end to end: quick loops skip it (-m 'not slow')


def kl(p, q):
    lp, lq = p - mx.logsumexp(p, -1, keepdims=True), q - mx.logsumexp(q, -1, keepdims=True)
    return (mx.exp(lp) * (lp - lq)).sum(-1).mean().item()


def leftovers(parent):
    """Anything convert left in `parent` (the output, a .partial temp folder, a .old backup)."""
    return sorted(p.name for p in parent.iterdir())


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    """Bundles of the fixture pair (centroid drafter) at 4, 8 and 16 bits, group size 32 so that
    every fixture width (32..160) quantises."""
    root = tmp_path_factory.mktemp("bundles")
    return {bits: (root / f"b{bits}", convert(root / f"b{bits}", bits=bits, group_size=32)) for bits in (4, 8, 16)}


@pytest.fixture(scope="module")
def float_target():
    return load_target(TARGET)


# --- good conversions ----------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8, 16])
def test_bundle_loads_in_mlx_lm_and_mlx_specdec_with_the_same_logits(bundles, bits):
    path, _ = bundles[bits]
    model, tokenizer = mlx_lm.load(str(path / "target"))
    bundle = load(path)
    assert bundle.drafter is not None and bundle.drafter.args.use_ordered_embeddings
    assert mx.array_equal(logits(model), logits(bundle.target.model))
    assert tokenizer.encode("hi") == bundle.tokenizer.encode("hi")


def test_quantisation_is_written_in_mlx_lm_config_format(bundles):
    path, manifest = bundles[4]
    cfg = json.loads((path / "target" / "config.json").read_text())
    q = cfg["quantization"]
    assert cfg["model_type"] == "gemma4_text" and cfg["global_head_dim"] == 64 and cfg["vocab_size"] == 512
    assert (q["group_size"], q["bits"], q["mode"]) == (32, 4, "affine")
    assert q["model.embed_tokens"] == {"group_size": 32, "bits": 8}  # measured default: tied head at 8
    assert "model.layers.0.self_attn.q_proj" not in q  # at the top-level setting: no entry
    assert q["model.layers.0.per_layer_projection"] is False  # width 16: not a multiple of 32
    assert cfg["quantization_config"] == q
    dq = json.loads((path / "drafter" / "config.json").read_text())["quantization"]
    assert "model.embed_tokens" not in dq  # the drafter's head follows --bits
    assert dq["masked_embedding.centroids"] == {"group_size": 32, "bits": 8}
    assert dq["pre_projection"] == dq["post_projection"] == {"group_size": 32, "bits": 8}
    assert manifest["quantization"]["drafter"]["model.embed_tokens"] == {"group_size": 32, "bits": 4}
    assert "quantization" not in json.loads((bundles[16][0] / "target" / "config.json").read_text())


def test_manifest_records_format_sources_quantisation_and_sizes(bundles):
    path, manifest = bundles[4]
    assert json.loads((path / "manifest.json").read_text()) == manifest
    assert manifest["format_version"] == weights_convert.FORMAT_VERSION
    assert manifest["sources"]["target"] == {"path": str(TARGET.resolve()), "revision": None}
    assert manifest["converter"]["name"] == "mlx-specdec"
    for part in ("target", "drafter"):
        files = sum(f.stat().st_size for f in (path / part).glob("*.safetensors"))
        assert 0 < manifest["sizes"][part]["bytes"] <= files
    assert manifest["sizes"]["target"]["bytes"] < bundles[16][1]["sizes"]["target"]["bytes"] / 3


def test_16_bit_bundle_equals_loading_the_hugging_face_folders(bundles, float_target):
    bundle = load(bundles[16][0])
    assert mx.array_equal(logits(bundle.target.model), logits(float_target.model))
    hf = load(target=TARGET, drafter=DRAFTERS["centroid"])
    for (k, a), (k2, b) in zip(sorted(_flat(bundle.drafter)), sorted(_flat(hf.drafter))):
        assert k == k2 and mx.array_equal(a, b), k


def test_4_and_8_bit_target_logits_stay_within_measured_error_of_float32(bundles, float_target):
    # Measured on this prompt (20 positions, logits softcapped at 30): 4-bit max |dlogit| 10.4,
    # KL 1.47 nats, top-1 0.35; 8-bit 1.66, KL 0.015, top-1 0.95. The random-weight fixtures are
    # far more fragile than trained models (see quantise.py), so the 4-bit bound is loose; both
    # still fail if a module is quantised at the wrong bits or with the wrong scales.
    ref = logits(float_target.model)
    for bits, max_abs, max_kl in ((4, 14.0, 2.0), (8, 2.5, 0.03)):
        got = logits(load(bundles[bits][0]).target.model)
        assert mx.abs(got - ref).max().item() < max_abs, bits
        assert kl(ref, got) < max_kl, bits


@pytest.mark.parametrize("head", ["dense", "centroid"])
def test_speculative_equals_plain_decoding_on_a_4_bit_bundle(tmp_path, head, bundles):
    path = bundles[4][0] if head == "centroid" else tmp_path / "b"
    if head == "dense":
        convert(path, drafter=DRAFTERS["dense"], bits=4, group_size=32)
    bundle = load(path)
    bundle.tokenizer.eos_token_ids = []
    _, want, _ = generate(bundle, PROMPT, GenerationSettings(max_tokens=48, draft=0))  # 68 positions > 4 windows
    for k in (1, 3, 5):
        _, got, stats = generate(bundle, PROMPT, GenerationSettings(max_tokens=48, draft=k))
        assert got == want, k
        assert stats.drafted > 0


def test_multimodal_layout_converts_to_the_same_target_as_the_text_layout(tmp_path, bundles):
    convert(tmp_path / "mm", target=TARGET_MM, bits=4, group_size=32)
    a = mx.load(str(tmp_path / "mm" / "target" / "model.safetensors"))
    b = mx.load(str(bundles[4][0] / "target" / "model.safetensors"))
    assert sorted(a) == sorted(b) and all(mx.array_equal(a[k], b[k]) for k in a)


def test_default_group_size_64_leaves_narrow_modules_in_floats_and_loads(tmp_path):
    manifest = convert(tmp_path / "b")
    q = manifest["quantization"]["target"]
    assert q["model.layers.0.mlp.gate_proj"] == {"group_size": 64, "bits": 4}  # width 64
    assert q["model.layers.0.mlp.down_proj"] is False  # width 32
    mlx_lm.load(str(tmp_path / "b" / "target"))
    load(tmp_path / "b")


def test_large_checkpoints_are_written_in_shards_that_mlx_lm_loads(tmp_path, monkeypatch, bundles):
    monkeypatch.setattr(write, "SHARD_BYTES", 100_000)
    convert(tmp_path / "b", bits=4, group_size=32)
    target = tmp_path / "b" / "target"
    shards = sorted(p.name for p in target.glob("*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    index = json.loads((target / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    model, _ = mlx_lm.load(str(target))
    ref, _ = mlx_lm.load(str(bundles[4][0] / "target"))
    assert mx.array_equal(logits(model), logits(ref))


def test_force_replaces_an_existing_bundle(tmp_path):
    convert(tmp_path / "b", bits=16)
    convert(tmp_path / "b", bits=4, force=True)
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["quantization"]["bits"] == 4
    assert leftovers(tmp_path) == ["b"]


# --- bad inputs: one exact line, nothing written ---------------------------------------------
def fails(out, message, **kw):
    """Convert must raise SpecdecError(message) (a str, or a compiled regex) and leave nothing."""
    before = leftovers(out.parent)
    with pytest.raises(SpecdecError) as e:
        convert(out, **kw)
    got = str(e.value)
    assert "\n" not in got
    if isinstance(message, str):
        assert got == message
    else:
        assert message.fullmatch(got), got
    assert leftovers(out.parent) == before
    return got


def edit(folder, path, value):
    """Set (or with value None, delete) config key `path` ("a.b" for nested)."""
    cfg = json.loads((folder / "config.json").read_text())
    *parents, key = path.split(".")
    node = cfg
    for p in parents:
        node = node[p]
    if value is None:
        del node[key]
    else:
        node[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def test_existing_output_is_not_replaced_without_force(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "mine.txt").write_text("keep")
    out = tmp_path / "b"
    with pytest.raises(SpecdecError) as e:
        convert(out)
    # Not "pass --force": --force would refuse it too (test_bad_input_sweep).
    assert str(e.value) == f"{out} exists and is not a bundle; refusing to replace it, choose another -o"
    with pytest.raises(SpecdecError) as e:
        convert(out, force=True)
    assert str(e.value) == f"{out} exists and is not a bundle; refusing to replace it, choose another -o"
    assert (out / "mine.txt").read_text() == "keep" and leftovers(tmp_path) == ["b"]


def test_missing_target_config_key_is_named_and_nothing_is_written(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    edit(t, "hidden_size", None)
    fails(tmp_path / "out", f"target {t}: missing config key 'hidden_size'", target=t)


def test_missing_drafter_config_key_is_named_and_nothing_is_written(tmp_path):
    d = copy(DRAFTERS["dense"], tmp_path / "d")
    edit(d, "backbone_hidden_size", None)
    fails(tmp_path / "out", f"drafter {d}: missing config key 'backbone_hidden_size'", drafter=d)


def test_target_that_is_not_gemma4_is_refused_with_the_accepted_types(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    edit(t, "model_type", "llama")
    fails(
        tmp_path / "out",
        f"target {t}: unsupported model_type 'llama': expected a Gemma 4 target "
        "('gemma4_text', 'gemma4_unified_text', 'gemma4' or 'gemma4_unified')",
        target=t,
    )


@pytest.mark.parametrize(
    "key, value, what, want",
    [
        ("backbone_hidden_size", 32, "backbone width", 64),
        ("text_config.vocab_size", 1024, "vocabulary size", 512),
        ("text_config.head_dim", 16, "head_dim", 32),
        ("text_config.global_head_dim", 32, "global_head_dim", 64),
        ("text_config.num_key_value_heads", 2, "num_key_value_heads", 1),
    ],
)
def test_pair_mismatch_is_refused_before_writing(tmp_path, key, value, what, want):
    d = copy(DRAFTERS["dense"], tmp_path / "d")
    edit(d, key, value)
    fails(
        tmp_path / "out",
        f"drafter {d}: does not fit the target: {what} is {value}, the target's is {want}; "
        "use the assistant made for this target",
        drafter=d,
    )


def test_target_without_tokenizer_files_is_refused_before_writing(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    (t / "tokenizer.json").unlink()
    (t / "tokenizer.model").unlink()
    fails(tmp_path / "out", f"target {t} has no tokenizer (tokenizer.json or tokenizer.model)", target=t)


def test_pickle_only_checkpoint_is_refused(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    (t / "model.safetensors").rename(t / "pytorch_model.bin")
    fails(
        tmp_path / "out",
        f"{t / 'pytorch_model.bin'}: pickle weights are refused (unpickling can run "
        "arbitrary code); use a safetensors checkpoint",
        target=t,
    )


def test_too_little_disk_space_is_refused_before_writing(tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "disk_usage", lambda path: SimpleNamespace(total=10**9, used=10**9, free=1000))
    out = tmp_path / "out"
    fails(
        out,
        re.compile(
            rf"not enough disk space for the bundle at {re.escape(str(out))}: "
            r"needs \d+\.\d MiB, 0\.0 MiB free"
        ),
    )


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"bits": 3}, "--bits must be one of 4, 8, 16, not 3"),
        ({"group_size": 48}, "--group-size must be one of 32, 64, 128, not 48"),
        ({"target": "not a repo!"}, "target not a repo! is neither an existing folder nor a hub repo id (owner/name)"),
    ],
)
def test_bad_bits_or_group_size_is_one_line_error(tmp_path, kw, message):
    fails(tmp_path / "out", message, **kw)


def test_keyboard_interrupt_mid_write_leaves_no_output(tmp_path, monkeypatch):
    calls = []
    real = write.quantise

    def interrupted(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(write, "quantise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "out", group_size=32)
    assert leftovers(tmp_path) == []


def test_failure_while_replacing_with_force_keeps_the_old_bundle(tmp_path, monkeypatch):
    convert(tmp_path / "b", bits=16)
    monkeypatch.setattr(write, "quantise", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt):
        convert(tmp_path / "b", bits=4, group_size=32, force=True)
    assert leftovers(tmp_path) == ["b"]
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["quantization"]["bits"] == 16


# --- the hub (faked) ---------------------------------------------------------------------
@pytest.fixture
def hub(tmp_path_factory, monkeypatch):
    fake = FakeHub(tmp_path_factory.mktemp("cache"), {"acme/target": TARGET, "acme/drafter": DRAFTERS["dense"]})
    monkeypatch.setattr(fetch, "snapshot_download", fake)
    return fake


def test_hub_repos_convert_and_the_manifest_names_the_resolved_revision(tmp_path, hub):
    manifest = convert(tmp_path / "b", target="acme/target@v1", drafter="acme/drafter", drafter_revision="main")
    commit = hashlib.sha1(b"acme/target@v1").hexdigest()
    assert manifest["sources"]["target"] == {"repo": "acme/target", "revision": commit}
    assert manifest["sources"]["drafter"]["revision"] == hashlib.sha1(b"acme/drafter@main").hexdigest()
    # metadata first, then a listing, then the weights, all at the resolved commit
    assert [(c[0], c[1], c[3]) for c in hub.calls[:3]] == [
        ("acme/target", "v1", False),
        ("acme/target", commit, True),
        ("acme/drafter", "main", False),
    ]
    assert not any(p.endswith(".bin") for c in hub.calls if not c[3] for p in c[2])
    load(tmp_path / "b")


def test_download_failing_midway_leaves_no_output_and_a_rerun_completes(tmp_path, hub):
    hub.fail_download = "acme/drafter"
    fails(
        tmp_path / "out",
        "downloading acme/drafter failed (The read operation timed out); run the same command again to resume",
        target="acme/target",
        drafter="acme/drafter",
    )
    hub.fail_download = None
    convert(tmp_path / "out", target="acme/target", drafter="acme/drafter")
    load(tmp_path / "out")


def test_hub_pickle_only_repo_is_refused_before_downloading_weights(tmp_path, hub):
    repo = copy(TARGET, tmp_path / "pickled")
    (repo / "model.safetensors").rename(repo / "pytorch_model.bin")
    hub.repos["acme/pickled"] = repo
    fails(
        tmp_path / "out",
        "acme/pickled/pytorch_model.bin: pickle weights are refused (unpickling can run "
        "arbitrary code); use a safetensors checkpoint",
        target="acme/pickled",
        drafter="acme/drafter",
    )
    assert not list(hub.cache.rglob("*.bin"))


@pytest.mark.parametrize(
    "error, message",
    [
        (
            None,
            "no repo acme/nope on the Hugging Face Hub (if it is private, log in with `hf auth login`); "
            "for a checkpoint on disk pass its folder",
        ),
        (
            http_error(GatedRepoError, 403),
            "acme/nope is gated: accept its licence on https://huggingface.co/acme/nope, "
            "then log in with `hf auth login` (or set HF_TOKEN)",
        ),
        (
            LocalEntryNotFoundError("offline"),
            "cannot reach the Hugging Face Hub for acme/nope and it is not in the "
            "local cache; connect to the internet, or pass a local folder holding the checkpoint",
        ),
    ],
)
def test_unknown_gated_or_unreachable_repo_is_one_line_naming_the_fix(tmp_path, hub, error, message):
    if error is not None:
        hub.repos["acme/nope"] = error
    fails(tmp_path / "out", message, target="acme/nope", drafter="acme/drafter")


def test_the_hub_token_never_appears_in_a_message(tmp_path, hub, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret123")
    hub.repos["acme/nope"] = OSError("401 for token hf_secret123")
    got = fails(
        tmp_path / "out",
        "downloading acme/nope failed (401 for token ***); run the same command again to resume",
        target="acme/nope",
        drafter="acme/drafter",
    )
    assert "hf_secret123" not in got


def test_conflicting_revisions_are_refused(tmp_path, hub):
    fails(
        tmp_path / "out",
        "acme/target@v1 names revision 'v1' but --target-revision says 'v2'",
        target="acme/target@v1",
        target_revision="v2",
    )


# --- the CLI ------------------------------------------------------------------------------
def test_cli_converts_and_prints_the_sizes(tmp_path):
    out = tmp_path / "b"
    result = CliRunner().invoke(
        app, ["convert", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-o", str(out), "--bits", "8"]
    )
    assert result.exit_code == 0, result.output
    assert re.fullmatch(rf"{re.escape(str(out))}: target \d+\.\d MiB, drafter \d+\.\d MiB\n", result.stdout)
    assert json.loads((out / "manifest.json").read_text())["quantization"]["bits"] == 8


def test_cli_prints_one_error_line_and_exits_1(tmp_path):
    (tmp_path / "b").mkdir()
    result = CliRunner().invoke(
        app, ["convert", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-o", str(tmp_path / "b")]
    )
    assert result.exit_code == 1
    assert result.stderr == f"error: {tmp_path / 'b'} already exists; pass --force to replace it\n"
    assert "Traceback" not in result.output


def _flat(module):
    from mlx.utils import tree_flatten

    return tree_flatten(module.parameters())
