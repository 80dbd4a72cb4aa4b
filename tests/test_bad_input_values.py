"""Values that would give silently wrong results or a traceback deep inside a model: config values
of the right type but out of range (checked in one place, `models.target.check_ranges` and the
drafter's `from_config`, before any tensor is built), integer weights, NaN weights, and
temperatures so small that float32 cannot divide by them.
"""

import json
import math

import mlx.core as mx
import pytest

from mlx_specdec.cache import cache_offset
from mlx_specdec.decode import NOT_FINITE, generate, stream_generate
from mlx_specdec.errors import SpecdecError
from mlx_specdec.load import load
from mlx_specdec.numerics import Verdict
from mlx_specdec.sampling import probs
from mlx_specdec.serve.api import parse_chat
from mlx_specdec.settings import GenerationSettings, SamplingParams

from .helpers.bad_input import convert_args, fails, generate_args, set_config
from .helpers.convert import copy
from .helpers.paths import DRAFTERS, TARGET


# --- config values of the right type that cannot make a model ------------------------------------
@pytest.mark.parametrize(
    "key, value, want",
    [
        ("hidden_size", 0, "hidden_size must be at least 1, not 0"),
        ("num_attention_heads", 0, "num_attention_heads must be at least 1, not 0"),
        ("num_hidden_layers", 0, "num_hidden_layers must be at least 1, not 0"),
        ("head_dim", 0, "head_dim must be at least 1, not 0"),
        ("head_dim", 33, "head_dim must be even, not 33"),
        ("sliding_window", 0, "sliding_window must be at least 1, not 0"),
        ("max_position_embeddings", 0, "max_position_embeddings must be at least 1, not 0"),
        ("vocab_size", 2**31, "vocab_size must be at most 2147483647 (token ids are int32), not 2147483648"),
        ("num_kv_shared_layers", 10, "num_kv_shared_layers must be below num_hidden_layers (10), not 10"),
        ("num_key_value_heads", 3, "num_attention_heads 4 is not a multiple of num_key_value_heads 3"),
        ("rms_norm_eps", 0, "rms_norm_eps must be above 0, not 0"),
        ("rms_norm_eps", -1e-6, "rms_norm_eps must be above 0, not -1e-06"),
        ("final_logit_softcapping", 0.0, "final_logit_softcapping must be above 0 or null, not 0.0"),
        ("intermediate_size", None, "missing config key 'intermediate_size'"),
        (
            "layer_types",
            ["sliding_attention"] * 9 + ["chunked_attention"],
            "layer_types[9] is 'chunked_attention'; expected 'full_attention' or 'sliding_attention'",
        ),
        (
            "rope_parameters",
            {"sliding_attention": {"rope_type": "yarn"}},
            "rope_parameters.sliding_attention.rope_type 'yarn' is not supported; expected 'default' or 'proportional'",
        ),
        (
            "rope_parameters",
            {"full_attention": {"rope_type": "proportional", "partial_rotary_factor": 0.0}},
            "rope_parameters.full_attention.partial_rotary_factor must be in (0, 1], not 0.0",
        ),
        (
            "enable_moe_block",
            True,
            "num_experts must be at least 1 (enable_moe_block is true), not None",
        ),
    ],
)
@pytest.mark.parametrize("command", ["generate", "convert"])
def test_target_config_values_out_of_range_are_one_line_before_any_tensor(tmp_path, key, value, want, command):
    t = copy(TARGET, tmp_path / "t")
    set_config(t, key, value)
    if command == "generate":
        fails(tmp_path, generate_args(t), f"{t / 'config.json'}: {want}")
    else:
        fails(tmp_path, convert_args(tmp_path / "out", t), f"target {t}: {want}")


@pytest.mark.parametrize(
    "key, value, want",
    [
        ("centroid_intermediate_top_k", 0, "centroid_intermediate_top_k must be from 1 to num_centroids (16), not 0"),
        ("centroid_intermediate_top_k", 17, "centroid_intermediate_top_k must be from 1 to num_centroids (16), not 17"),
        ("num_centroids", 0, "num_centroids must be at least 1, not 0"),
        ("backbone_hidden_size", 0, "backbone_hidden_size must be at least 1, not 0"),
    ],
)
def test_drafter_config_values_out_of_range_are_one_line(tmp_path, key, value, want):
    d = copy(DRAFTERS["centroid"], tmp_path / "d")
    set_config(d, key, value)
    fails(
        tmp_path,
        ["generate", "--target", TARGET, "--drafter", d, "--prompt-ids", "2"],
        f"{d / 'config.json'}: {want}",
    )


def test_drafter_text_config_is_range_checked_like_the_targets(tmp_path):
    d = copy(DRAFTERS["dense"], tmp_path / "d")
    cfg = json.loads((d / "config.json").read_text())
    cfg["text_config"]["rms_norm_eps"] = 0
    (d / "config.json").write_text(json.dumps(cfg))
    fails(tmp_path, convert_args(tmp_path / "out", TARGET, d), f"drafter {d}: rms_norm_eps must be above 0, not 0")


# --- weights ----------------------------------------------------------------------------------
def _set_weight(folder, key, change):
    weights = mx.load(str(folder / "model.safetensors"))
    weights[key] = change(weights[key])
    mx.save_safetensors(str(folder / "model.safetensors"), weights)


def test_integer_typed_weights_are_refused_at_load_not_run_as_numbers(tmp_path):
    t = copy(TARGET, tmp_path / "t")
    _set_weight(t, "model.norm.weight", lambda w: w.astype(mx.int32))
    fails(
        tmp_path,
        generate_args(t),
        f"{t}: model.norm.weight holds int32 values, not floating-point weights; re-convert or re-download it",
    )


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_nan_or_inf_weights_stop_generation_with_one_line_not_pad_tokens(tmp_path, bad):
    t = copy(TARGET, tmp_path / "t")
    _set_weight(t, "model.norm.weight", lambda w: mx.full(w.shape, bad, dtype=w.dtype))
    b = load(target=t)
    b.numerics = Verdict(exact=True, plain_width=1, max_draft_tokens=8, agree=list(range(1, 10)))  # not measured
    with pytest.raises(SpecdecError) as e:
        generate(b, [2, 5], GenerationSettings(max_tokens=4))
    assert str(e.value) == (
        "the target's logits are not finite (NaN or inf): its weights are likely corrupt or wrongly converted; "
        "re-convert or re-download the model"
    )


class _NotFiniteFrom:
    """The target, with NaN logits in every row at position `at` or later: what activations that
    overflow late in a context would give. Everything else is the real target's."""

    def __init__(self, target, at: int):
        self._target, self._at = target, at

    def __getattr__(self, name):
        return getattr(self._target, name)

    def __call__(self, tokens, cache):
        positions = cache_offset(cache) + mx.arange(tokens.shape[1])
        logits, hidden = self._target(tokens, cache)
        return mx.where((positions >= self._at)[None, :, None], mx.nan, logits), hidden


@pytest.mark.parametrize("draft", [0, 3])
def test_logits_that_turn_non_finite_after_the_first_token_stop_there_with_one_line(draft):
    """Row p chooses the token at p + 1: a prompt of 4 and NaN rows from position 9 on leave 6
    good tokens (from rows 3..8). Plain decoding yields them all; a speculative round that reaches
    row 9 yields none of its tokens. Either way the output so far is the clean run's, then one error."""
    b = load(target=TARGET, drafter=DRAFTERS["dense"])
    b.numerics = Verdict(exact=True, plain_width=1, max_draft_tokens=8, agree=list(range(1, 10)))  # not measured
    prompt, settings = [2, 5, 7, 11], GenerationSettings(max_tokens=16, draft=draft)
    clean = generate(b, prompt, settings).tokens
    b.target = _NotFiniteFrom(b.target, at=len(prompt) + 5)
    got = []
    with pytest.raises(SpecdecError) as e:
        for record in stream_generate(b, prompt, settings):
            got.append(record.token)
    assert str(e.value) == NOT_FINITE
    assert got == clean[: len(got)] and (len(got) == 6 if draft == 0 else 1 <= len(got) <= 6)


# --- temperatures too small for float32 ---------------------------------------------------------
TINY = [1e-46, 5e-324, 1e-39]


@pytest.mark.parametrize("temp", TINY)
def test_a_tiny_temperature_is_greedy_and_its_distribution_is_one_hot_not_nan(temp):
    params = SamplingParams(temp=temp)
    assert params.greedy
    p = probs(mx.array([[1.0, 3.0, 2.0]]), params)
    assert p.tolist() == [[0.0, 1.0, 0.0]]


@pytest.fixture(scope="module")
def pair():
    """The dense pair with an assumed verdict (not measured: the probe is not what these tests time)."""
    b = load(target=TARGET, drafter=DRAFTERS["dense"])
    b.tokenizer.eos_token_ids = []
    b.numerics = Verdict(exact=True, plain_width=1, max_draft_tokens=8, agree=list(range(1, 10)))
    return b


def test_generate_at_a_tiny_temperature_equals_greedy_output(pair):
    ids = [2, 5, 9]
    greedy = generate(pair, ids, GenerationSettings(max_tokens=6, draft=2)).tokens
    tiny = generate(pair, ids, GenerationSettings(max_tokens=6, draft=2, sampling=SamplingParams(temp=1e-46))).tokens
    assert tiny == greedy


def test_chat_temp_and_the_servers_temperature_take_a_tiny_value_as_greedy(pair):
    from mlx_specdec.chat.session import ChatSession

    session = ChatSession(pair)
    action = session.command("/temp 1e-46")
    assert not action.error and session.settings.sampling.greedy
    req = parse_chat({"messages": [{"role": "user", "content": "hi"}], "temperature": 1e-46}, "m")
    assert req.sampling.greedy
