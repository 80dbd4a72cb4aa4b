"""Every published Gemma 4 family loads, computes what transformers computes, and decodes exactly.

Fixtures: tests/fixtures/families/<family>/{target,assistant} (scripts/fixtures/make_family_fixtures.py),
one tiny pair per family in the hub repos' layout: 26b-a4b (MoE, k_eq_v, no KV sharing),
31b (k_eq_v, no KV sharing), 12b (gemma4_unified + gemma4_unified_assistant), e2b (as published:
extra K/V tensors, `global_head_dim` in the config, tokenizer.json + chat_template.jinja only).
Tolerances are the existing ones (tests/fixtures/README.md): f32 target logits 2e-3, hidden 5e-4,
drafter 1e-4 from explicit inputs; ids exactly. The MoE pair also runs as the hub's bf16 files
are (a bf16 / fp16 copy made at test time) on the CPU backend, whose gather_mm takes float32 only.
"""

import json
import shutil

import mlx.core as mx
import numpy as np
import pytest
from mlx_lm.models.switch_layers import SwitchLinear

from mlx_specdec import calibrate, probe
from mlx_specdec.bench import synthetic
from mlx_specdec.cache import PromptCache, drafter_kv, make_target_cache
from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.models.target import Float32SwitchLinear, float32_experts, kv_layout, kv_source_layers
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.bad_input import cli
from .helpers.paths import FIXTURES
from .helpers.stats import chi2_critical, two_sample_chi_square

FAMILY_DIR = FIXTURES / "families"
FAMILIES = ["26b-a4b", "31b", "12b", "e2b"]
LOGIT_ATOL, HIDDEN_ATOL, DRAFTER_ATOL = 2e-3, 5e-4, 1e-4
META = json.loads((FAMILY_DIR / "reference.json").read_text())


@pytest.fixture(scope="module")
def ref():
    return mx.load(str(FAMILY_DIR / "reference.safetensors"))


_PAIRS: dict = {}


def pair(family):
    """The family's Bundle (target + assistant), EOS disabled so runs go the full length."""
    if family not in _PAIRS:
        b = load(target=FAMILY_DIR / family / "target", drafter=FAMILY_DIR / family / "assistant")
        b.tokenizer.eos_token_ids = []
        _PAIRS[family] = b
    return _PAIRS[family]


def run(bundle, ids, k, max_tokens=40, sampling=None, **kw):
    settings = GenerationSettings(max_tokens=max_tokens, draft=k, sampling=sampling or SamplingParams())
    return generate(bundle, list(ids), settings, **kw)[1]


def close(got, want, atol):
    np.testing.assert_allclose(np.array(got), np.array(want), atol=atol, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_target_logits_and_hidden_match_transformers_one_pass_and_token_by_token(family, ref):
    target = pair(family).target
    ids = ref[f"{family}/prompt/ids"]
    logits, hidden = target(ids[None], make_target_cache(target.config))
    close(logits[0], ref[f"{family}/prompt/logits"], LOGIT_ATOL)
    close(hidden[0], ref[f"{family}/prompt/hidden"], HIDDEN_ATOL)
    cache = make_target_cache(target.config)  # one token at a time: crosses the window (8) twice
    steps = [target(ids[None, i : i + 1], cache)[0][0, 0] for i in range(ids.shape[0])]
    close(mx.stack(steps), ref[f"{family}/prompt/logits"], LOGIT_ATOL)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("p", META["drafter_positions"])
def test_drafter_steps_match_transformers_from_explicit_inputs(family, p, ref):
    b = pair(family)
    pre = f"{family}/drafter/p{p}/"
    W = b.drafter.sliding_window
    kv = {
        "full_attention": (ref[pre + "full_k"][None], ref[pre + "full_v"][None]),
        "sliding_attention": (ref[pre + "swa_k"][None, :, -(W + 1) :], ref[pre + "swa_v"][None, :, -(W + 1) :]),
    }
    for step in range(3):
        x = b.target.embed(ref[pre + "tokens"][step].reshape(1, 1))
        logits, nxt = b.drafter(x, ref[pre + "hidden_in"][step].reshape(1, 1, -1), kv, p)
        close(logits[0, 0], ref[pre + "logits"][step], DRAFTER_ATOL)
        close(nxt[0, 0], ref[pre + "hidden_out"][step], DRAFTER_ATOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_drafter_reads_the_k_v_transformers_hands_it(family, ref):
    """The last non-shared layer of each type (no KV sharing: the last layer; k_eq_v: V from k_proj)."""
    b = pair(family)
    ids = ref[f"{family}/prompt/ids"]
    for p in META["drafter_positions"]:
        cache = make_target_cache(b.target.config)
        for i in range(p):
            b.target(ids[None, i : i + 1], cache)
        kv = drafter_kv(cache, b.target.kv_layers)
        pre = f"{family}/drafter/p{p}/"
        first = max(0, p - (b.drafter.sliding_window + 1))
        for j, name in enumerate(("k", "v")):
            close(kv["full_attention"][j][0], ref[pre + f"full_{name}"], HIDDEN_ATOL)
            close(kv["sliding_attention"][j][0], ref[pre + f"swa_{name}"][:, first:], HIDDEN_ATOL)


def test_kv_source_layers_and_layout_per_family():
    last = {"sliding_attention": 4, "full_attention": 5}  # no KV sharing: the last layer of each type
    want = {"26b-a4b": last, "31b": last, "12b": last, "e2b": {"sliding_attention": 3, "full_attention": 2}}
    for family, layers in want.items():
        cfg = pair(family).target.config
        assert kv_source_layers(cfg) == layers
    assert kv_layout(pair("31b").target.config)[:3] == [("sliding_attention", 2, 16)] * 2 + [("full_attention", 1, 32)]
    assert kv_layout(pair("12b").target.config)[2] == ("full_attention", 2, 32)
    assert len(kv_layout(pair("e2b").target.config)) == 4  # the 2 KV-shared layers cache nothing


@pytest.mark.parametrize(
    "family", [f if f in ("26b-a4b", "e2b") else pytest.param(f, marks=pytest.mark.slow) for f in FAMILIES]
)  # the quick loop: the MoE and the per-layer-input family
def test_speculative_greedy_equals_plain_greedy_equals_transformers_past_the_window(family, ref):
    b = pair(family)
    prompt = np.array(ref[f"{family}/greedy/prompt_ids"]).tolist()
    want = np.array(ref[f"{family}/greedy/ids"]).tolist()
    assert len(prompt) + len(want) > 5 * b.target.sliding_window
    for k in (0, 1, 4):
        assert run(b, prompt, k) == want, f"k={k}"


@pytest.mark.slow
def test_moe_speculative_sampling_matches_plain_sampling_of_the_target():
    """Two-sample chi-square on tokens 2 and 3 (made by speculative rounds) on the 26B-A4B pair.
    Temperature 3: this prompt's next-token distribution is peaked (top-1 0.98 at temperature 1)."""
    b = pair("26b-a4b")
    ids, runs = [2, 40, 41, 42, 43, 44, 45], 100

    def outputs(k):
        pc = PromptCache(b)
        return np.array(
            [
                run(
                    b,
                    ids,
                    k,
                    max_tokens=3,
                    prompt_cache=pc,
                    sampling=SamplingParams(seed=10_000 * k + seed, temp=3.0, top_k=3),
                )
                for seed in range(runs)
            ]
        )

    plain, spec = outputs(0), outputs(3)
    for col in (1, 2):
        stat, n = two_sample_chi_square(plain[:, col], spec[:, col])
        assert n >= 3
        assert stat < chi2_critical(n - 1), f"token {col}: chi2 {stat:.1f} over {n} categories"


def test_published_e2b_layout_loads_with_its_chat_template_and_no_sentencepiece_model():
    folder = FAMILY_DIR / "e2b" / "target"
    raw = json.loads((folder / "config.json").read_text())
    assert "vocab_size" not in raw and "per_layer_config" not in raw["text_config"]
    assert raw["text_config"]["global_head_dim"] == 32
    assert not (folder / "tokenizer.model").exists() and (folder / "chat_template.jinja").is_file()
    shared = mx.load(str(folder / "model.safetensors"))
    assert "model.language_model.layers.5.self_attn.k_proj.weight" in shared  # unused, dropped on load
    tok = pair("e2b").tokenizer
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    assert list(chat) == json.loads((FIXTURES / "reference.json").read_text())["chat_hi_ids"]
    assert tok.decode(tok.encode("def f(x):\n    return x")).endswith("def f(x):\n    return x")


# --- the MoE in bf16 / fp16 on the CPU backend (whose gather_mm takes float32 only) ----------
def lowered_pair(root, dtype):
    """A copy of the 26B-A4B pair with every float tensor in `dtype`, as the hub's bf16 files are."""
    for part in ("target", "assistant"):
        shutil.copytree(FAMILY_DIR / "26b-a4b" / part, root / part)
        weights = mx.load(str(root / part / "model.safetensors"))
        lowered = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
        mx.save_safetensors(str(root / part / "model.safetensors"), lowered, metadata={"format": "pt"})
    return root


def lowered_bundle(root, dtype):
    folder = lowered_pair(root, dtype)
    b = load(target=folder / "target", drafter=folder / "assistant")
    b.tokenizer.eos_token_ids = []
    return b


@pytest.mark.parametrize("dtype", [mx.bfloat16, pytest.param(mx.float16, marks=pytest.mark.slow)], ids=["bf16", "fp16"])
def test_bf16_and_fp16_moe_pairs_decode_on_the_cpu_and_speculative_greedy_equals_plain(tmp_path, dtype):
    """A plain step gathers its 2 expert slots of 4 (only those cast), a verify pass 4 or more
    (every expert cast): the rows must agree all the same."""
    b = lowered_bundle(tmp_path, dtype)
    prompt = np.array(mx.load(str(FAMILY_DIR / "reference.safetensors"))["26b-a4b/greedy/prompt_ids"]).tolist()
    plain = run(b, prompt, 0, max_tokens=20)  # 12 + 20 positions: past the window (8)
    assert len(plain) == 20
    for k in (1, 4):
        assert run(b, prompt, k, max_tokens=20) == plain, f"k={k}"
    assert b.target.float32_experts == 3 * 6  # gate, up and down of each of the 6 layers


def test_probe_and_auto_calibration_run_on_a_bf16_moe_pair_on_the_cpu(tmp_path):
    """auto's calibration and the numerics probe (its op-by-op part included) pass the bf16 experts."""
    b = lowered_bundle(tmp_path, mx.bfloat16)
    v = probe.measure(b)
    assert (v.exact, v.dtype) == (True, "bfloat16")
    assert probe.op_differences(b.target) == []
    costs = calibrate.calibrate(b, 2, repeats=1)
    assert len(costs) == 3 and all(c > 0 for c in costs)


@pytest.mark.slow  # the quick loop decodes a bf16 MoE pair in test_bf16_and_fp16_moe_pairs_decode_...
def test_generate_runs_a_bf16_moe_pair_from_its_hugging_face_folders_with_auto(tmp_path):
    folder = lowered_pair(tmp_path, mx.bfloat16)
    r = cli(
        "generate", "--target", folder / "target", "--drafter", folder / "assistant", "--prompt-ids", "2,5", "-m", "4"
    )
    assert (r.code, r.escaped) == (0, False), r.stderr
    assert "Traceback" not in r.stderr + r.stdout


@pytest.mark.parametrize(
    "experts, slots, is_sorted",
    [(4, (1, 1, 2), False), (4, (1, 5, 2), False), (128, (80,), True)],
    ids=["a-step-casts-its-experts", "a-prefill-casts-all", "sorted-as-switch-glu-sorts-64-or-more"],
)
def test_float32_expert_gather_is_the_float32_gather_rounded_to_the_input_dtype(experts, slots, is_sorted):
    keys = mx.random.split(mx.random.key(3), 3)
    x = mx.random.normal((*slots[:-1], 1, 1, 16) if not is_sorted else (*slots, 1, 16), key=keys[0])
    x = x.astype(mx.bfloat16)
    indices = mx.random.randint(0, experts, slots, key=keys[1]).astype(mx.uint32)
    indices = mx.sort(indices) if is_sorted else indices
    proj = SwitchLinear(16, 8, experts, bias=False)
    proj.weight = mx.random.normal((experts, 8, 16), key=keys[2]).astype(mx.bfloat16)
    w32 = proj.weight.astype(mx.float32).swapaxes(-1, -2)
    want = mx.gather_mm(x.astype(mx.float32), w32, rhs_indices=indices, sorted_indices=is_sorted)
    proj.__class__ = Float32SwitchLinear
    got = proj(x, indices, sorted_indices=is_sorted)
    assert got.dtype == mx.bfloat16 and got.shape == want.shape
    assert mx.array_equal(got, want.astype(mx.bfloat16))


def test_a_synthetic_bf16_moe_target_gathers_its_experts_in_float32_on_the_cpu():
    """`specdec bench --synthetic CONFIG --bits 16` builds its Target without `load`."""
    target = synthetic.build(FAMILY_DIR / "26b-a4b" / "target" / "config.json", bits=16)[0].target
    assert target.float32_experts == 3 * 6
    logits, hidden = target(mx.array([[2, 5, 40]]), make_target_cache(target.config))
    mx.eval(logits, hidden)
    assert (logits.dtype, hidden.dtype) == (mx.bfloat16, mx.bfloat16)


def test_experts_keep_their_own_gather_in_float32_and_off_the_cpu(monkeypatch):
    assert pair("26b-a4b").target.float32_experts == 0  # the fixture is float32
    model = pair("26b-a4b").target.model
    lowered = SwitchLinear(4, 4, 2, bias=False)
    lowered.weight = lowered.weight.astype(mx.bfloat16)
    monkeypatch.setattr(mx, "default_device", lambda: mx.Device(mx.gpu, 0))
    assert float32_experts(lowered) == 0 and type(lowered) is SwitchLinear  # Metal gathers bf16 itself
    assert float32_experts(model) == 0
