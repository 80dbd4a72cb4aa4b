"""provision: MODEL -> folder (converted on first use, with a fake convert), memory estimate and fit."""

import mlx.core as mx
import pytest

from mlx_specdec import provision, registry
from mlx_specdec.cache import make_target_cache
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load_target, read_config
from mlx_specdec.models.target import Target, make_model, text_config

from .helpers.paths import FIXTURES, TARGET


class FakeConvert:
    """Records each call and writes the one file that makes a folder count as a bundle."""

    def __init__(self):
        self.calls = []

    def __call__(self, **kw):
        self.calls.append({k: v for k, v in kw.items() if k != "log"})
        (kw["output"] / "target").mkdir(parents=True)
        (kw["output"] / "target" / "config.json").write_text((TARGET / "config.json").read_text())


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_SPECDEC_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


# ---------------------------------------------------------------------------------------------
# The default model: the cached Gemma 4 E2B bundle, converted on first use, or a clear offline line.


def test_default_bundle_offline_says_so_and_points_to_demo(cache):
    with pytest.raises(SpecdecError) as e:
        provision.default_bundle(reachable=lambda: False)
    assert "unreachable (offline?)" in str(e.value) and "specdec chat --demo" in str(e.value)
    assert "\n" not in str(e.value)


def test_default_bundle_converts_once_then_uses_the_cache(cache):
    convert = FakeConvert()
    folder = provision.default_bundle(convert_fn=convert, reachable=lambda: True)
    assert folder == cache / "gemma-4-E2B-it-4bit"
    assert convert.calls == [
        dict(target="google/gemma-4-E2B-it", drafter="google/gemma-4-E2B-it-assistant", output=folder, bits=4)
    ]
    assert provision.default_bundle(convert_fn=convert, reachable=lambda: False) == folder
    assert len(convert.calls) == 1


def test_chat_still_exports_the_moved_names():
    from mlx_specdec.chat import terminal as chat

    assert chat.default_bundle is provision.default_bundle and chat.cache_dir is provision.cache_dir


# ---------------------------------------------------------------------------------------------
# model_folder: what the CLI calls with MODEL.


def test_model_folder_returns_an_existing_folder_unchanged(cache):
    assert provision.model_folder(str(TARGET)) == TARGET


@pytest.mark.parametrize(
    "name",
    [
        "26b-a4b",
        "gemma-4-26b-a4b",
        "google/gemma-4-26B-A4B-it",
        "GOOGLE/gemma-4-26b-a4b-it-assistant",
        "mlx-community/gemma-4-26B-A4B-it-assistant-bf16",  # a drafter id names the pair
    ],
)
def test_model_folder_converts_a_known_name_into_the_cache_once(cache, name):
    convert = FakeConvert()
    kw = dict(convert_fn=convert, reachable=lambda: True, available=1 << 50)
    folder = provision.model_folder(name, **kw)
    assert folder == cache / "gemma-4-26B-A4B-it-4bit"
    assert convert.calls == [
        dict(target="google/gemma-4-26B-A4B-it", drafter="google/gemma-4-26B-A4B-it-assistant", output=folder, bits=4)
    ]
    assert provision.model_folder(name, **kw) == folder and len(convert.calls) == 1


MLX_26B = "mlx-community/gemma-4-26b-a4b-it-4bit"


@pytest.mark.parametrize(
    "name", [MLX_26B, "MLX-Community/Gemma-4-26B-A4B-it-4bit", f"https://huggingface.co/{MLX_26B}/"]
)
def test_mlx_community_id_converts_from_that_repo_with_the_mlx_drafter_into_its_own_bundle_once(cache, name):
    convert = FakeConvert()
    kw = dict(convert_fn=convert, reachable=lambda: True, available=1 << 50)
    folder = provision.model_folder(name, **kw)
    assert folder == cache / "gemma-4-26b-a4b-it-4bit-mlx-community"
    drafter = "mlx-community/gemma-4-26B-A4B-it-assistant-bf16"
    assert convert.calls == [dict(target=MLX_26B, drafter=drafter, output=folder, bits=4)]
    assert provision.model_folder(name, **kw) == folder and len(convert.calls) == 1


def test_mlx_and_google_bundles_of_one_pair_live_side_by_side(cache):
    convert = FakeConvert()
    kw = dict(convert_fn=convert, reachable=lambda: True, available=1 << 50)
    google = provision.model_folder("e2b", **kw)
    mlx = provision.model_folder("mlx-community/gemma-4-e2b-it-4bit", **kw)
    assert [c["target"] for c in convert.calls] == ["google/gemma-4-E2B-it", "mlx-community/gemma-4-e2b-it-4bit"]
    assert [c["drafter"] for c in convert.calls] == [
        "google/gemma-4-E2B-it-assistant",
        "mlx-community/gemma-4-E2B-it-assistant-bf16",
    ]
    assert google.name.lower() != mlx.name.lower()  # distinct on a case-insensitive file system too
    assert provision.model_folder("e2b", **kw) == google
    assert provision.model_folder("mlx-community/gemma-4-e2b-it-4bit", **kw) == mlx
    assert len(convert.calls) == 2


def test_bits_that_conflict_with_a_pre_quantised_repo_are_said_in_one_line_and_not_applied(cache):
    convert, lines = FakeConvert(), []
    kw = dict(convert_fn=convert, reachable=lambda: True, available=1 << 50, log=lines.append)
    provision.model_folder(MLX_26B, bits=8, **kw)
    note = [x for x in lines if "--bits" in x]
    assert note == [f"--bits 8 does not apply to {MLX_26B}: it is already 4-bit; its weights are used as they are"]
    assert convert.calls[0]["bits"] == 4
    lines.clear()
    provision.model_folder(MLX_26B, bits=4, **kw)  # agrees: nothing to say (and the cache is used)
    assert not [x for x in lines if "--bits" in x] and len(convert.calls) == 1


def test_memory_fit_of_a_pre_quantised_repo_uses_its_4_bits(cache):
    pair = registry.resolve("26b-a4b")
    four, eight = provision.estimate(pair, 4).total, provision.estimate(pair, 8).total
    convert = FakeConvert()
    kw = dict(convert_fn=convert, reachable=lambda: True)
    provision.ensure_bundle(MLX_26B, 8, available=(four + eight) // 2, **kw)  # fits at 4 bits, not at 8
    assert len(convert.calls) == 1
    with pytest.raises(SpecdecError) as e:
        provision.ensure_bundle("google/gemma-4-26B-A4B-it", 8, available=(four + eight) // 2, **kw)
    assert "--bits 4" in str(e.value)
    (cache / "gemma-4-26b-a4b-it-4bit-mlx-community" / "target" / "config.json").unlink()
    with pytest.raises(SpecdecError) as e:
        provision.ensure_bundle(MLX_26B, available=four - 1, **kw)
    assert str(e.value).startswith(f"{MLX_26B} at 4 bits with a 32768-token context needs {four / 1e9:.1f} GB")
    assert len(convert.calls) == 1


def test_model_folder_at_8_bits_is_its_own_bundle(cache):
    convert = FakeConvert()
    folder = provision.model_folder("e4b", bits=8, convert_fn=convert, reachable=lambda: True, available=1 << 50)
    assert folder == cache / "gemma-4-E4B-it-8bit" and convert.calls[0]["bits"] == 8


def test_model_folder_unknown_name_lists_the_known_names(cache):
    with pytest.raises(SpecdecError) as e:
        provision.model_folder("llama-3", convert_fn=FakeConvert(), reachable=lambda: True)
    msg = str(e.value)
    assert msg.startswith("unknown model 'llama-3': known names are e2b, e4b, 12b, 26b-a4b, 31b, ")
    assert msg.endswith("a folder path also works") and "\n" not in msg


def test_model_folder_missing_path_says_no_such_folder(cache, tmp_path):
    with pytest.raises(SpecdecError, match=r"^\./nowhere/bundle: no such folder$"):
        provision.model_folder("./nowhere/bundle")


def test_ensure_bundle_refuses_before_converting_when_memory_is_short(cache):
    convert = FakeConvert()
    with pytest.raises(SpecdecError) as e:
        provision.ensure_bundle("31b", 8, convert_fn=convert, reachable=lambda: True, available=24 << 30)
    assert convert.calls == [] and not (cache / "gemma-4-31B-it-8bit").exists()
    assert "google/gemma-4-31B-it at 8 bits" in str(e.value) and "--bits 4" in str(e.value)


# ---------------------------------------------------------------------------------------------
# The KV-cache estimate against the bytes our caches really hold.


def _peak_kv_bytes(target: Target, n_prompt: int, n_steps: int) -> int:
    """Run a prompt the way decode._prefill does, then single-token steps; sum of per-layer peaks."""
    cache = make_target_cache(target.config, provision.MAX_REWIND)
    peak = [0] * len(cache)

    def step(tokens):
        target(mx.array(tokens)[None], cache)
        mx.eval([c.state for c in cache])
        for i, c in enumerate(cache):
            peak[i] = max(peak[i], c.nbytes)

    ids = [3 + i % 50 for i in range(n_prompt)]
    for start in range(0, n_prompt - 1, provision.PREFILL_CHUNK):
        step(ids[start : min(start + provision.PREFILL_CHUNK, n_prompt - 1)])
    step(ids[-1:])
    for _ in range(n_steps):
        step([5])
    return sum(peak)


def test_kv_estimate_equals_the_peak_the_caches_hold():
    # fixture: 10 layers, the last 4 KV-shared, window 16, head_dim 32 (full layers 64), float32.
    # 1300 tokens: a full prefill chunk arrives past the window, so the sliding caches reach their bound.
    target = load_target(TARGET)
    assert provision.kv_bytes(target.config, 1308, itemsize=4) == _peak_kv_bytes(target, 1300, 8)


@pytest.mark.parametrize("n_prompt", [100, 700])
def test_kv_estimate_is_never_below_the_caches(n_prompt):
    target = load_target(TARGET)  # the sliding caches stay below their bound
    assert provision.kv_bytes(target.config, n_prompt + 8, itemsize=4) >= _peak_kv_bytes(target, n_prompt, 8)


@pytest.mark.slow  # the quick loop keeps a cheaper check of this idea
def test_kv_estimate_counts_k_eq_v_full_layers_with_their_global_heads():
    # A tiny 26B/31B-like target: k_eq_v full layers with 2 global KV heads of dim 32, no sharing.
    cfg = text_config(
        dict(
            model_type="gemma4_text",
            hidden_size=32,
            num_hidden_layers=6,
            intermediate_size=64,
            num_attention_heads=4,
            num_key_value_heads=1,
            num_global_key_value_heads=2,
            head_dim=16,
            global_head_dim=32,
            vocab_size=64,
            sliding_window=8,
            attention_k_eq_v=True,
            max_position_embeddings=4096,
            layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2,
        )
    )
    model = make_model(cfg)
    mx.eval(model.parameters())
    target = Target(model, cfg)
    assert provision.kv_bytes(cfg, 1140, itemsize=4) == _peak_kv_bytes(target, 1100, 40)


def test_kv_estimate_with_an_image_longer_than_a_chunk_equals_the_caches_peak(monkeypatch):
    # The 31B-shaped image fixture (window 32): its 60-token image attends to itself, so its prefill
    # chunk holds it whole; with 16-token chunks that chunk, not the chunk size, bounds the sliding
    # caches. 259 text tokens before it: the image arrives just as a sliding cache compacts.
    from mlx_specdec.load import load
    from mlx_specdec.media import expand_images

    monkeypatch.setattr(provision, "PREFILL_CHUNK", 16)
    folder = FIXTURES / "media_31b"
    bundle = load(target=folder / "target")
    user = [2] + [300 + i % 50 for i in range(259)] + [510, 301, 302, 303, 304, 305]  # 510: one placeholder
    ids, images = expand_images(bundle, user, [folder / "image.png"])
    media = images.encode(bundle)
    cache = make_target_cache(bundle.target.config, provision.MAX_REWIND)
    peak = [0] * len(cache)

    def record():
        mx.eval([c.state for c in cache])
        for i, c in enumerate(cache):
            peak[i] = max(peak[i], c.nbytes)

    start = 0
    while start < len(ids) - 1:  # decode._prefill's chunks
        end = media.chunk_end(start, min(start + 16, len(ids) - 1))
        media.prefill(bundle.target, ids[start:end], start, cache)
        record()
        start = end
    for token in ids[-1:] + [5] * 8:
        bundle.target(mx.array([token])[None], cache)
        record()
    cfg, context = bundle.target.config, len(ids) + 8
    assert provision.kv_bytes(cfg, context, itemsize=4, image_tokens=60) == sum(peak)
    assert provision.kv_bytes(cfg, context, itemsize=4) < sum(peak)  # the text estimate falls short
    # The estimate of that folder counts its processor's budget (max_soft_tokens 70).
    e = provision.estimate(folder / "target", max_context=context)
    assert e.kv == provision.kv_bytes(cfg, context, image_tokens=70) > provision.kv_bytes(cfg, context)


# ---------------------------------------------------------------------------------------------
# Memory fit.


def test_estimate_is_weights_plus_kv_plus_overhead_at_the_default_context():
    pair = registry.resolve("e2b")
    e = provision.estimate(pair, 4)
    assert e.context == provision.DEFAULT_CONTEXT
    assert e.weights == sum(registry.bundle_bytes(pair, 4))
    assert e.kv == provision.kv_bytes(pair.target_config(), provision.DEFAULT_CONTEXT)
    assert e.total == e.weights + e.kv + provision.OVERHEAD_BYTES


def test_estimate_caps_the_context_at_the_model_limit():
    assert provision.estimate("e2b", 4, 10**7).context == 131072


def test_memory_fit_passes_when_it_fits():
    need = provision.estimate("e4b", 4)
    assert provision.check_memory_fit("e4b", 4, available=need.total) == need


def test_memory_fit_refusal_names_the_numbers_and_what_would_fit():
    with pytest.raises(SpecdecError) as e:
        provision.check_memory_fit("31b", 4, 262144, available=24 << 30)
    msg = str(e.value)
    need = provision.estimate("31b", 4, 262144)
    head = f"google/gemma-4-31B-it at 4 bits with a 262144-token context needs {need.total / 1e9:.1f} GB"
    assert msg.startswith(head)
    assert "but this machine has 25.8 GB (available)" in msg and "\n" not in msg
    hint = msg.split("would fit: ")[1]
    context = int(hint.split("--max-context ")[1].split(",")[0])
    assert provision.estimate("31b", 4, context).total <= 24 << 30 < provision.estimate("31b", 4, context + 1024).total
    assert "a smaller model (26b-a4b, 12b, e4b, e2b)" in hint


def test_memory_fit_suggests_fewer_bits_first():
    fits = r"would fit: --bits 4, or a smaller model \(12b, e4b, e2b\), or 2 such machines under mlx.launch$"
    with pytest.raises(SpecdecError, match=fits):
        provision.check_memory_fit("31b", 8, available=24 << 30, machines=1)


def test_memory_fit_of_a_folder_counts_its_files(tmp_path):
    e = provision.estimate(TARGET, 4, 1000)
    assert e.weights == sum(f.stat().st_size for f in TARGET.glob("*.safetensors"))
    with pytest.raises(SpecdecError, match=r"nothing smaller fits$"):
        provision.check_memory_fit(TARGET, 4, 1000, available=e.weights // 2)


# ---------------------------------------------------------------------------------------------
# `specdec models` and MODEL names on the command line.


def test_models_json_lists_every_pair_and_what_is_converted_locally(cache):
    import json

    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    (cache / "gemma-4-12B-it-4bit" / "target").mkdir(parents=True)
    (cache / "gemma-4-12B-it-4bit" / "target" / "config.json").write_text("{}")
    (cache / "gemma-4-31B-it-4bit.partial" / "target").mkdir(parents=True)  # unfinished: not listed
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    rows = {r["name"]: r for r in out["models"]}
    assert list(rows) == [p.name for p in registry.PAIRS]
    assert rows["12b"]["local"] == {"4": str(cache / "gemma-4-12B-it-4bit")}
    assert all(not r["local"] for name, r in rows.items() if name != "12b")
    e2b = rows["e2b"]
    assert e2b["drafter"] == "google/gemma-4-E2B-it-assistant" and e2b["head"] == "centroid (2048)"
    assert e2b["bundle_bytes"] == sum(registry.bundle_bytes(registry.resolve("e2b"), 4))
    assert e2b["memory_bytes"] == provision.estimate("e2b", 4).total


def test_models_json_lists_google_and_mlx_converted_bundles_of_a_pair(cache):
    import json

    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    for name in ("gemma-4-26B-A4B-it-4bit", "gemma-4-26b-a4b-it-4bit-mlx-community"):
        (cache / name / "target").mkdir(parents=True)
        (cache / name / "target" / "config.json").write_text("{}")
    (cache / "gemma-4-e2b-it-4bit-mlx-community" / "target").mkdir(parents=True)  # unfinished: not listed
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert rows["26b-a4b"]["local"] == {"4": str(cache / "gemma-4-26B-A4B-it-4bit")}
    assert rows["26b-a4b"]["local_mlx"] == {MLX_26B: str(cache / "gemma-4-26b-a4b-it-4bit-mlx-community")}
    assert rows["26b-a4b"]["mlx_repos"] == [MLX_26B]
    assert rows["26b-a4b"]["mlx_drafter"] == "mlx-community/gemma-4-26B-A4B-it-assistant-bf16"
    assert all(not r["local_mlx"] for name, r in rows.items() if name != "26b-a4b")
    table = CliRunner().invoke(app, ["models"])
    lines = table.stdout.splitlines()
    row = next(i for i, x in enumerate(lines) if "google/gemma-4-26B-A4B-it " in x)
    header = next(x.split("┃") for x in lines if "converted" in x)
    col = next(i for i, c in enumerate(header) if c.strip() == "converted")
    cell = " ".join(x.split("│")[col].strip() for x in lines[row : row + 2])  # the column wraps
    assert cell == "gemma-4-26B-A4B-it-4bit, gemma-4-26b-a4b-it-4bit-mlx-community"


def test_models_table_shows_the_local_bundle(cache):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    (cache / "gemma-4-E2B-it-4bit" / "target").mkdir(parents=True)
    (cache / "gemma-4-E2B-it-4bit" / "target" / "config.json").write_text("{}")
    result = CliRunner().invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    line = next(x for x in result.stdout.splitlines() if "google/gemma-4-E2B-it " in x)
    assert "gemma-4-E2B-it-4bit" in line and "centroid" in line


def test_cli_unknown_model_name_is_one_error_line(cache):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    result = CliRunner().invoke(app, ["generate", "gemma-9-huge", "--prompt", "hi"])
    assert result.exit_code == 2
    assert result.stderr.startswith("error: unknown model 'gemma-9-huge': known names are e2b,")
    assert result.stderr.count("\n") == 1


def test_memory_fit_of_a_bundle_counts_target_and_drafter_files(tmp_path):
    import shutil

    bundle = tmp_path / "bundle"
    (bundle / "target").mkdir(parents=True)
    (bundle / "drafter").mkdir()
    shutil.copyfile(TARGET / "config.json", bundle / "target" / "config.json")
    (bundle / "target" / "model.safetensors").write_bytes(b"\0" * 3000)
    (bundle / "drafter" / "model.safetensors").write_bytes(b"\0" * 500)
    e = provision.estimate(bundle, 4, 1000)
    assert e.weights == 3500
    assert e.kv == provision.kv_bytes(read_config(TARGET), 1000)


def test_available_memory_is_metal_working_set_on_a_mac_and_ram_elsewhere():
    import sys

    import psutil

    size, what = provision.available_memory()
    if sys.platform == "darwin":
        assert what == "Metal's recommended working set" and 0 < size <= psutil.virtual_memory().total
    else:
        assert (size, what) == (psutil.virtual_memory().total, "RAM")


def test_hub_reachable_is_false_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert provision.hub_reachable() is False
