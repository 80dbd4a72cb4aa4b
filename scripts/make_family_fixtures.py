"""Write one tiny real checkpoint pair per published Gemma 4 family, plus transformers references.

Families (tests/fixtures/families/<family>/{target,assistant}/, each laid out like the hub repo):

    26b-a4b  MoE target (fused `experts.gate_up_proj`/`experts.down_proj`, `router.proj/scale/
             per_expert_scale`), attention_k_eq_v (full layers: no v_proj, own KV-head count),
             no KV sharing, no PLE; dense-head assistant
    31b      dense, attention_k_eq_v, no KV sharing, no PLE; dense-head assistant
    12b      `gemma4_unified` (text `gemma4_unified_text`, encoder-free `model.embed_vision.*`),
             no KV sharing, no PLE; `gemma4_unified_assistant` with a dense head (transformers'
             default, `use_ordered_embeddings: false`)
    e2b      E2B as published: PLE, KV sharing, double-wide MLP, and the unused K/V tensors of the
             KV-shared layers present in the file; centroid-head assistant

Every target is multimodal (`model_type` gemma4 / gemma4_unified, tensors `model.language_model.*`)
and its config is rewritten the way transformers 5.5-5.7 wrote the published ones: `global_head_dim`
and `num_global_key_value_heads` directly, no `per_layer_config`, no top-level `vocab_size` (the
script checks that transformers 5.24 reads the rewritten config back to the same model). Tokenizer
files as published: tokenizer.json, tokenizer_config.json, chat_template.jinja, no tokenizer.model.
Sliding windows are 8, so every test crosses them.

References (families/reference.safetensors, float32; ids int32) per family F:
    F/prompt/{ids [24], logits [24,V], hidden [24,H]}      one pass, no cache
    F/greedy/{prompt_ids [12], ids [40], margins [40]}     generate(do_sample=False)
    F/drafter/p{5,9,20}/{full_k, full_v, swa_k, swa_v, tokens, hidden_in, logits, hidden_out}
                                                           3 chained drafter steps on prompt/ids
families/reference.json: seed, margins (greedy, drafter, MoE routing), shapes.

Reuses scripts/make_reference_fixtures.py (tokenizer, randomisation, reference helpers).
Requires torch==2.13.0 (CPU), transformers==5.24.*, sentencepiece==0.2.*.
Usage: /work/main/.venv/bin/python scripts/make_family_fixtures.py [--out tests/fixtures/families]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

import torch
from gemma_tokenizer import build_hf_tokenizer, end_of_turn_ids
from make_reference_fixtures import (
    MIN_GREEDY_MARGIN,
    VOCAB,
    drafter_steps,
    randomise,
    save_model,
    target_greedy,
    target_one_pass,
    train_tokenizer,
)

SEED = 4321
WINDOW = 8
S, F = "sliding_attention", "full_attention"
LAYERS = [S, S, F, S, S, F]
DRAFTER_POSITIONS = [5, 9, 20]  # 9 = W + 1: the first position whose sliding view is clipped

COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 64,
    "num_hidden_layers": len(LAYERS),
    "layer_types": LAYERS,
    "num_attention_heads": 4,
    "head_dim": 16,
    "global_head_dim": 32,
    "sliding_window": WINDOW,
    "final_logit_softcapping": 30.0,
    "tie_word_embeddings": True,
    "max_position_embeddings": 4096,
    "bos_token_id": 2,
    "pad_token_id": 0,
}
NO_PLE = {"hidden_size_per_layer_input": 0, "vocab_size_per_layer_input": 0}
FAMILIES = {
    "26b-a4b": {
        "kind": "gemma4",
        "centroid": False,
        "text": dict(
            intermediate_size=32,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            enable_moe_block=True,
            num_experts=4,
            top_k_experts=2,
            moe_intermediate_size=32,
            num_kv_shared_layers=0,
            **NO_PLE,
        ),
    },
    "31b": {
        "kind": "gemma4",
        "centroid": False,
        "text": dict(
            intermediate_size=48,
            num_key_value_heads=2,
            num_global_key_value_heads=1,
            attention_k_eq_v=True,
            num_kv_shared_layers=0,
            **NO_PLE,
        ),
    },
    "12b": {
        "kind": "gemma4_unified",
        "centroid": False,
        "text": {"intermediate_size": 48, "num_key_value_heads": 2, "num_kv_shared_layers": 0},
    },
    "e2b": {
        "kind": "gemma4",
        "centroid": True,
        "text": {
            "intermediate_size": 32,
            "num_key_value_heads": 1,
            "num_kv_shared_layers": 2,
            "use_double_wide_mlp": True,
            "hidden_size_per_layer_input": 8,
            "vocab_size_per_layer_input": VOCAB,
        },
    },
}


# --- configs and models ------------------------------------------------------------------
def text_config(family: dict, eos_ids, drafter: bool = False):
    from transformers import Gemma4TextConfig
    from transformers.models.gemma4_unified import Gemma4UnifiedTextConfig

    kw = {**COMMON, **family["text"], "eos_token_id": eos_ids}
    if drafter:  # the assistant's own layers: 4 layers, all reading the target's K/V
        for k in ("enable_moe_block", "num_experts", "top_k_experts", "moe_intermediate_size", "use_double_wide_mlp"):
            kw.pop(k, None)
        kw.update(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=4,
            layer_types=[S, S, S, F],
            num_attention_heads=2,
            num_kv_shared_layers=4,
            final_logit_softcapping=None,
        )
        if family["kind"] == "gemma4":
            kw.update(NO_PLE)
    if family["kind"] == "gemma4_unified":
        return Gemma4UnifiedTextConfig(**kw)
    return Gemma4TextConfig(**kw)


def make_target(family: dict, eos_ids, gen):
    """(text-only model for the references, multimodal model in the published layout)."""
    import transformers as tf
    from transformers.models import gemma4_unified as gu

    tc = text_config(family, eos_ids)
    if family["kind"] == "gemma4_unified":
        text = gu.Gemma4UnifiedForCausalLM(tc).eval()
        vision = gu.Gemma4UnifiedVisionConfig(
            patch_size=2,
            pooling_kernel_size=1,
            mm_embed_dim=8,
            mm_posemb_size=4,
            output_proj_dims=COMMON["hidden_size"],
        )
        mm = gu.Gemma4UnifiedForConditionalGeneration(
            gu.Gemma4UnifiedConfig(
                text_config=tc.to_dict(), vision_config=vision.to_dict(), audio_config=None, eos_token_id=eos_ids
            )
        )
    else:
        text = tf.Gemma4ForCausalLM(tc).eval()
        mm = tf.Gemma4ForConditionalGeneration(
            tf.Gemma4Config(text_config=tc.to_dict(), vision_config=None, audio_config=None, eos_token_id=eos_ids)
        )
    randomise(text, gen, embed_std=0.15, final_norm=3.0)
    with torch.no_grad():
        for name, p in sorted(text.named_parameters()):
            # Router scales: O(1) so that expert scores are spread (no near-ties in the top-k).
            if name.endswith(("router.scale", "router.per_expert_scale")):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith("router.proj.weight"):  # spread expert scores: clear top-k choices
                p.copy_(torch.randn(p.shape, generator=gen) * 4 / p.shape[-1] ** 0.5)
            elif name.endswith(("experts.down_proj", "experts.gate_up_proj")):
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
        for name, p in sorted(mm.named_parameters()):
            if not name.startswith("model.language_model."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    missing, unexpected = mm.model.language_model.load_state_dict(text.model.state_dict(), strict=True)
    assert not missing and not unexpected
    text.tie_weights()
    mm.tie_weights()
    return text.eval(), mm.eval()


def make_drafter(family: dict, eos_ids, gen):
    import transformers as tf
    from transformers.models import gemma4_unified_assistant as gua

    tc = text_config(family, eos_ids, drafter=True)
    centroid = {"use_ordered_embeddings": True, "num_centroids": 16, "centroid_intermediate_top_k": 4}
    extra = centroid if family["centroid"] else {}
    cls, cfg_cls = (
        (gua.Gemma4UnifiedAssistantForCausalLM, gua.Gemma4UnifiedAssistantConfig)
        if family["kind"] == "gemma4_unified"
        else (tf.Gemma4AssistantForCausalLM, tf.Gemma4AssistantConfig)
    )
    model = cls(
        cfg_cls(text_config=tc, backbone_hidden_size=COMMON["hidden_size"], tie_word_embeddings=True, **extra)
    ).eval()
    randomise(model, gen, embed_std=0.5, final_norm=1.0)
    if family["centroid"]:
        model.masked_embedding.token_ordering.copy_(torch.randperm(VOCAB, generator=gen))
    model.tie_weights()
    model.generation_config.num_assistant_tokens = 4
    model.generation_config.num_assistant_tokens_schedule = "constant"
    return model


# --- the published layout ----------------------------------------------------------------
def as_published(config: dict) -> dict:
    """A transformers 5.24 config.json -> the form transformers 5.5-5.7 wrote for the hub repos."""
    out = dict(config)
    out.pop("vocab_size", None)  # the multimodal top level has none
    text = dict(out["text_config"])
    per_layer = text.pop("per_layer_config", None) or {}
    full = [str(i) for i, t in enumerate(text["layer_types"]) if t == F]
    dims = {per_layer.get(i, {}).get("head_dim") for i in full}
    heads = {per_layer.get(i, {}).get("num_key_value_heads") for i in full}
    assert len(dims) == 1 and len(heads) == 1, per_layer
    text["global_head_dim"] = dims.pop()
    text["num_global_key_value_heads"] = heads.pop()
    out["text_config"] = text
    return out


def publish_config(folder: Path) -> None:
    """Rewrite folder/config.json as published; transformers 5.24 must read it back the same."""
    from transformers import AutoConfig

    path = folder / "config.json"
    before = AutoConfig.from_pretrained(str(folder)).to_dict()
    path.write_text(json.dumps(as_published(json.loads(path.read_text())), indent=2, sort_keys=True) + "\n")
    after = AutoConfig.from_pretrained(str(folder)).to_dict()
    for key in ("per_layer_config", "layer_types", "num_key_value_heads", "num_kv_shared_layers"):
        assert before["text_config"][key] == after["text_config"][key], (folder, key)


def save_target(mm, folder: Path, eos_ids, family: dict, gen) -> None:
    from safetensors.torch import load_file, save_file

    save_model(mm, folder, eos_ids)
    publish_config(folder)
    text = family["text"]
    shared = text.get("num_kv_shared_layers", 0)
    if shared:  # published E2B files keep unused K/V tensors for the KV-shared layers
        weights = load_file(str(folder / "model.safetensors"))
        for i in range(COMMON["num_hidden_layers"] - shared, COMMON["num_hidden_layers"]):
            d = COMMON["global_head_dim"] if LAYERS[i] == F else COMMON["head_dim"]
            rows = text["num_key_value_heads"] * d
            pre = f"model.language_model.layers.{i}.self_attn."
            weights[pre + "k_proj.weight"] = torch.randn(rows, COMMON["hidden_size"], generator=gen) * 0.1
            weights[pre + "v_proj.weight"] = torch.randn(rows, COMMON["hidden_size"], generator=gen) * 0.1
            weights[pre + "k_norm.weight"] = torch.rand(d, generator=gen) + 0.5
        save_file(dict(sorted(weights.items())), str(folder / "model.safetensors"), metadata={"format": "pt"})


def save_published_tokenizer(tok, folder: Path) -> None:
    """tokenizer.json + tokenizer_config.json + chat_template.jinja, no tokenizer.model."""
    tok.save_pretrained(str(folder))
    (folder / "tokenizer.model").unlink(missing_ok=True)
    path = folder / "tokenizer_config.json"
    cfg = json.loads(path.read_text())
    for k in ("vocab_file", "is_local", "local_files_only"):
        cfg.pop(k, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    assert (folder / "chat_template.jinja").is_file()


@torch.no_grad()
def check_reloads(folder: Path, text_model, ids: torch.Tensor) -> None:
    """transformers 5.24 reads the published-style folder back to the same model."""
    from transformers import AutoModelForImageTextToText

    mm = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=torch.float32).eval()
    mm.set_attn_implementation("eager")
    want = text_model(input_ids=ids[None], use_cache=False).logits
    got = mm(input_ids=ids[None], use_cache=False).logits
    assert torch.allclose(want, got, atol=1e-5), f"{folder}: reloaded model disagrees"


# --- references --------------------------------------------------------------------------
class RouterGap:
    """Smallest gap between the k-th and (k+1)-th expert probability over every routed token."""

    def __init__(self, model):
        self.gap = float("inf")
        self.hooks = [m.register_forward_hook(self) for n, m in model.named_modules() if n.endswith(".router")]

    def __call__(self, module, args, out):
        probs, k = out[0], module.config.top_k_experts
        top = torch.topk(probs, k + 1, dim=-1).values
        self.gap = min(self.gap, float((top[..., k - 1] - top[..., k]).min()))


def family_references(name, text, drafter, rng, ref: dict, meta: dict) -> None:
    def rand_ids(n: int) -> torch.Tensor:
        ids = torch.randint(4, VOCAB, (n,), generator=rng)
        ids[0] = 2
        return ids

    router = RouterGap(text)
    seq = rand_ids(24)
    logits, hidden = target_one_pass(text, seq)
    ref[f"{name}/prompt/ids"], ref[f"{name}/prompt/logits"], ref[f"{name}/prompt/hidden"] = seq.int(), logits, hidden
    for _ in range(200):  # redraw (deterministically) until the greedy path has no near-tie
        ids = rand_ids(12)
        gen_ids, m = target_greedy(text, ids, 40)
        if float(m.min()) >= MIN_GREEDY_MARGIN:
            break
    else:
        raise RuntimeError(f"{name}: no greedy prompt with margin >= {MIN_GREEDY_MARGIN}")
    ref[f"{name}/greedy/prompt_ids"], ref[f"{name}/greedy/ids"] = ids.int(), gen_ids.int()
    ref[f"{name}/greedy/margins"] = m
    worst = float("inf")
    for p in DRAFTER_POSITIONS:
        r = drafter_steps(text, drafter, seq, p, 3)
        assert r["swa_mask"].nonzero()[:, 0].tolist() == list(range(max(0, p - WINDOW - 1), p))
        for k in ("full_k", "full_v", "swa_k", "swa_v", "tokens", "hidden_in", "logits", "hidden_out"):
            v = r[k]
            ref[f"{name}/drafter/p{p}/{k}"] = v if v.is_floating_point() else v.int()
        top = torch.topk(r["logits"], 2, dim=-1).values
        worst = min(worst, float((top[:, 0] - top[:, 1]).min()))
    for h in router.hooks:
        h.remove()
    meta[name] = {
        "greedy_min_margin": float(m.min()),
        "drafter_min_margin": worst,
        "router_min_topk_gap": None if router.gap == float("inf") else router.gap,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures/families", type=Path)
    out: Path = ap.parse_args().out
    assert torch.__version__.split("+")[0] == "2.13.0", f"needs torch==2.13.0, got {torch.__version__}"
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)
    rng = torch.Generator().manual_seed(SEED + 1)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)

    with tempfile.TemporaryDirectory() as tmp:
        tok = build_hf_tokenizer(train_tokenizer(Path(tmp)), Path(tmp))
    eos_ids = end_of_turn_ids(tok)

    ref: dict[str, torch.Tensor] = {}
    meta: dict = {
        "seed": SEED,
        "sliding_window": WINDOW,
        "drafter_positions": DRAFTER_POSITIONS,
        "eos_token_id": eos_ids,
        "torch": torch.__version__,
        "families": {},
    }
    for name, family in FAMILIES.items():
        text, mm = make_target(family, eos_ids, gen)
        drafter = make_drafter(family, eos_ids, gen)
        for m in (text, mm, drafter):
            m.set_attn_implementation("eager")
        save_target(mm, out / name / "target", eos_ids, family, gen)
        save_published_tokenizer(tok, out / name / "target")
        save_model(drafter, out / name / "assistant", eos_ids)
        publish_config(out / name / "assistant")
        check_reloads(out / name / "target", text, torch.arange(2, 30))
        family_references(name, text, drafter, rng, ref, meta["families"])

    from safetensors.torch import save_file

    ref = {k: v.detach().contiguous().clone() for k, v in sorted(ref.items())}
    save_file(ref, str(out / "reference.safetensors"), metadata={"format": "pt"})
    meta["tensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in ref.items()}
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(json.dumps(meta["families"], indent=1))


if __name__ == "__main__":
    main()
