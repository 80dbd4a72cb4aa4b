"""Write the tiny real checkpoints and Hugging Face reference outputs under tests/fixtures/.

transformers is the numerical oracle for our MLX port of Gemma 4 (target) and its MTP drafter
(`gemma4_assistant`). CI must not need torch, so this script is run once by a developer and its
outputs are committed. It is deterministic: every random draw comes from a seeded generator,
sentencepiece trains on one thread, and running it twice gives byte-identical weights and
references (tokenizer files too, on the same library versions).

Requires (pinned; never an unpinned torch):
    torch==2.13.0 (CPU build), transformers==5.24.*, sentencepiece==0.2.*, safetensors, numpy

Usage:
    python scripts/make_reference_fixtures.py [--out tests/fixtures]

What it writes (see tests/fixtures/README.md for every tensor name, shape and tolerance):
    tokenizer files        in target_text/ and target_mm/ (sentencepiece BPE, vocab 512)
    target_text/           Gemma4ForCausalLM, model_type gemma4_text, keys model.*
    target_mm/             the same weights as Gemma4ForConditionalGeneration writes them
                           (model_type gemma4, keys model.language_model.*, plus a tiny vision tower)
    drafter_dense/         Gemma4AssistantForCausalLM, tied dense head
    drafter_centroid/      Gemma4AssistantForCausalLM, use_ordered_embeddings (centroid-masked head)
    reference.safetensors  logits / hidden states / greedy ids / drafter steps
    reference.json         metadata: prompts, positions, margins, configs used
"""

from __future__ import annotations

import argparse
import inspect
import json
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

# The shared Gemma-style tokenizer builder (scripts/ is on sys.path when run as a script).
from gemma_tokenizer import TURN_END, build_hf_tokenizer, save_tokenizer, train_sentencepiece

SEED = 1234
VOCAB = 512
STDLIB_MODULES = [
    "argparse",
    "collections",
    "contextlib",
    "dataclasses",
    "functools",
    "inspect",
    "itertools",
    "json",
    "os",
    "pathlib",
    "re",
    "string",
    "textwrap",
    "typing",
]
WINDOW = 16
MIN_GREEDY_MARGIN = 0.02
# The brief asked for 128; 32 keeps the two target copies (text + multimodal layout) near the
# fixture size budget. The MLP is still double-wide (64) in the KV-shared layers.
TARGET_INTERMEDIATE = 32
TARGET_EMBED_STD = 0.15
TARGET_FINAL_NORM = 3.0


# --------------------------------------------------------------------------------------------
# 1. tokenizer
# --------------------------------------------------------------------------------------------
def stdlib_corpus() -> list[str]:
    """Docstring paragraphs of a few stdlib modules, in a fixed order."""
    import importlib

    lines: list[str] = []
    for name in STDLIB_MODULES:
        mod = importlib.import_module(name)
        docs = [inspect.getdoc(mod) or ""]
        for attr in sorted(dir(mod)):
            if attr.startswith("_"):
                continue
            obj = getattr(mod, attr, None)
            if inspect.isfunction(obj) or inspect.isclass(obj) or inspect.isbuiltin(obj):
                docs.append(inspect.getdoc(obj) or "")
        for doc in docs:
            for para in doc.split("\n\n"):
                para = " ".join(para.split())
                if para:
                    lines.append(para)
    return lines


def train_tokenizer(work: Path) -> Path:
    """Train a Gemma-style sentencepiece BPE model (ids: pad 0, eos 1, bos 2, unk 3)."""
    return train_sentencepiece(stdlib_corpus(), VOCAB, work, SEED)


# --------------------------------------------------------------------------------------------
# 2./3. models
# --------------------------------------------------------------------------------------------
def target_text_config(eos_ids: list[int]):
    from transformers import Gemma4TextConfig

    s, f = "sliding_attention", "full_attention"
    return Gemma4TextConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=TARGET_INTERMEDIATE,
        num_hidden_layers=10,
        layer_types=[s, s, s, s, f, s, s, s, s, f],
        num_kv_shared_layers=4,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        sliding_window=WINDOW,
        hidden_size_per_layer_input=16,
        vocab_size_per_layer_input=VOCAB,
        use_double_wide_mlp=True,
        final_logit_softcapping=30.0,
        tie_word_embeddings=True,
        max_position_embeddings=4096,
        initializer_range=0.02,
        eos_token_id=eos_ids,
        bos_token_id=2,
        pad_token_id=0,
    )


def drafter_config(centroid: bool, eos_ids: list[int]):
    from transformers import Gemma4AssistantConfig, Gemma4TextConfig

    s, f = "sliding_attention", "full_attention"
    text = Gemma4TextConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        layer_types=[s, s, s, f],
        num_kv_shared_layers=4,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=32,
        global_head_dim=64,
        sliding_window=WINDOW,
        hidden_size_per_layer_input=0,
        vocab_size_per_layer_input=0,
        use_double_wide_mlp=False,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=eos_ids,
        bos_token_id=2,
        pad_token_id=0,
    )
    extra = dict(use_ordered_embeddings=True, num_centroids=16, centroid_intermediate_top_k=4) if centroid else {}
    return Gemma4AssistantConfig(text_config=text, backbone_hidden_size=64, tie_word_embeddings=True, **extra)


@torch.no_grad()
def randomise(model: torch.nn.Module, gen: torch.Generator, embed_std: float, final_norm: float) -> None:
    """Peaky, loader-bug-revealing weights.

    Linear weights ~ N(0, 1/fan_in) keep activations O(1). Embeddings get `embed_std`: small
    enough that the scaled input embedding (x sqrt(H)) does not dominate the residual stream
    (else a random tied model just repeats its input token), while the final norm's weight is
    scaled by `final_norm` so the tied head still gives logits spread over several units.
    Gemma 4's RMSNorm multiplies by `weight` directly (no `1 + weight`), so norm weights are
    uniform(0.5, 1.5); `layer_scalar` buffers are uniform(0.5, 1.5) too.
    """
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name == "model.norm.weight":
            p.copy_((torch.rand(p.shape, generator=gen) + 0.5) * final_norm)
        elif name.endswith("norm.weight") or "_norm." in name or name.endswith("layernorm.weight"):
            p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
        elif "embed_tokens" in name:
            p.copy_(torch.randn(p.shape, generator=gen) * embed_std)
        elif p.dim() == 2:
            p.copy_(torch.randn(p.shape, generator=gen) / p.shape[1] ** 0.5)
        else:
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    for name, b in sorted(model.named_buffers(), key=lambda kv: kv[0]):
        if name.endswith("layer_scalar"):
            b.copy_(torch.rand(b.shape, generator=gen) + 0.5)


def make_target(eos_ids, gen):
    from transformers import Gemma4ForCausalLM

    model = Gemma4ForCausalLM(target_text_config(eos_ids)).eval()
    randomise(model, gen, embed_std=TARGET_EMBED_STD, final_norm=TARGET_FINAL_NORM)
    model.tie_weights()
    return model


def make_target_mm(target, eos_ids, gen):
    """The same text weights in the multimodal layout, plus a tiny vision tower to be ignored."""
    from transformers import Gemma4Config, Gemma4ForConditionalGeneration, Gemma4VisionConfig

    vision = Gemma4VisionConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=1,
        num_key_value_heads=1,
        head_dim=8,
        position_embedding_size=8,
        patch_size=2,
        pooling_kernel_size=1,
    )
    cfg = Gemma4Config(
        text_config=target_text_config(eos_ids).to_dict(),
        vision_config=vision.to_dict(),
        audio_config=None,
        eos_token_id=eos_ids,
    )
    mm = Gemma4ForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in sorted(mm.named_parameters(), key=lambda kv: kv[0]):
            if not name.startswith("model.language_model."):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    missing, unexpected = mm.model.language_model.load_state_dict(target.model.state_dict(), strict=True)
    assert not missing and not unexpected
    mm.tie_weights()
    return mm


def make_drafter(centroid: bool, eos_ids, gen):
    from transformers import Gemma4AssistantForCausalLM

    model = Gemma4AssistantForCausalLM(drafter_config(centroid, eos_ids)).eval()
    randomise(model, gen, embed_std=0.5, final_norm=1.0)
    if centroid:
        perm = torch.randperm(VOCAB, generator=gen)
        model.masked_embedding.token_ordering.copy_(perm)
    model.tie_weights()
    model.generation_config.num_assistant_tokens = 4
    model.generation_config.num_assistant_tokens_schedule = "constant"
    return model


def save_model(model, folder: Path, eos_ids) -> None:
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.generation_config.do_sample = False
    model.save_pretrained(str(folder), safe_serialization=True)


# --------------------------------------------------------------------------------------------
# 4. references
# --------------------------------------------------------------------------------------------
def margins(logits: torch.Tensor) -> torch.Tensor:
    """top1 - top2 along the last axis."""
    top = torch.topk(logits.float(), 2, dim=-1).values
    return top[..., 0] - top[..., 1]


@torch.no_grad()
def target_one_pass(target, ids: torch.Tensor):
    out = target.model(input_ids=ids[None], use_cache=False)
    hidden = out.last_hidden_state[0]
    logits = target(input_ids=ids[None], use_cache=False).logits[0]
    return logits, hidden


@torch.no_grad()
def target_incremental(target, ids: torch.Tensor):
    from transformers import DynamicCache

    cache = DynamicCache(config=target.config)
    logits, hidden = [], []
    for i in range(ids.shape[0]):
        out = target(input_ids=ids[None, i : i + 1], cache=cache, use_cache=True, output_hidden_states=True)
        cache = out.cache
        logits.append(out.logits[0, 0])
        hidden.append(out.hidden_states[-1][0, 0])
    return torch.stack(logits), torch.stack(hidden)


@torch.no_grad()
def target_greedy(target, ids: torch.Tensor, new_tokens: int):
    out = target.generate(
        input_ids=ids[None],
        attention_mask=torch.ones_like(ids[None]),
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
        eos_token_id=None,
        pad_token_id=0,
    )
    gen = out.sequences[0, ids.shape[0] :]
    step_logits = torch.stack([step[0] for step in out.logits])
    assert torch.equal(step_logits.argmax(-1), gen)
    return gen, margins(step_logits)


def mask_to_bool(mask, kv_len: int) -> torch.Tensor:
    """A prepared 4D attention mask (bool, additive float, or None) -> bool [kv_len]."""
    if mask is None:
        return torch.ones(kv_len, dtype=torch.bool)
    m = mask[0, 0, 0]
    return m if m.dtype == torch.bool else m == 0


@torch.no_grad()
def drafter_steps(target, drafter, seq: torch.Tensor, p: int, n_steps: int):
    """Chained drafter steps at fixed position p, as SinglePositionMultiTokenCandidateGenerator does."""
    out = target.model(input_ids=seq[None, :p], use_cache=False, return_shared_kv_states=True)
    shared = {k: (v[0], v[1]) for k, v in out.shared_kv_states.items()}
    h = out.last_hidden_state[:, -1:]  # target final-normed hidden at p-1
    x = seq[None, p : p + 1]
    position_ids = torch.tensor([[p]])

    captured = {}
    hook = None
    if drafter.masked_embedding is not None:
        hook = drafter.masked_embedding.register_forward_hook(lambda mod, args, res: captured.__setitem__("h", args[0]))

    rec = {
        "token": [],
        "hidden_in": [],
        "logits": [],
        "hidden_out": [],
        "selected_ids": [],
        "selected_clusters": [],
        "centroid_margin": [],
    }
    for _ in range(n_steps):
        embeds = torch.cat([target.model.embed_tokens(x), h], dim=-1)
        d = drafter(inputs_embeds=embeds, position_ids=position_ids, shared_kv_states=shared, use_cache=False)
        rec["token"].append(int(x[0, 0]))
        rec["hidden_in"].append(h[0, 0])
        rec["logits"].append(d.logits[0, 0])
        rec["hidden_out"].append(d.last_hidden_state[0, 0])
        if hook is not None:
            me = drafter.masked_embedding
            c = me.centroids(captured["h"])[0, 0]
            top = torch.topk(c, me.centroid_intermediate_top_k + 1).values
            clusters = torch.topk(c, me.centroid_intermediate_top_k).indices
            ordering = me.token_ordering.long().view(me.num_centroids, me.vocab_size_per_centroid)
            rec["selected_clusters"].append(clusters)
            rec["selected_ids"].append(ordering[clusters].reshape(-1))
            rec["centroid_margin"].append(float(top[-2] - top[-1]))
        x = d.logits.argmax(-1)
        h = d.last_hidden_state
    if hook is not None:
        hook.remove()

    # What the drafter attends to: its own masks, turned into bool over the K/V we passed.
    masks = drafter.create_attention_masks(drafter.pre_projection(embeds), None, shared)
    full_k, full_v = shared["full_attention"]
    swa_k, swa_v = shared["sliding_attention"]
    full_mask = mask_to_bool(masks["full_attention"], full_k.shape[2])
    swa_mask = mask_to_bool(masks["sliding_attention"], swa_k.shape[2])

    # Cross-check: handing the drafter only the attended sliding entries changes nothing.
    keep = swa_mask.nonzero()[:, 0]
    trimmed = {"full_attention": shared["full_attention"], "sliding_attention": (swa_k[:, :, keep], swa_v[:, :, keep])}
    embeds0 = torch.cat([target.model.embed_tokens(seq[None, p : p + 1]), out.last_hidden_state[:, -1:]], -1)
    a = drafter(inputs_embeds=embeds0, position_ids=position_ids, shared_kv_states=shared).logits
    b = drafter(inputs_embeds=embeds0, position_ids=position_ids, shared_kv_states=trimmed).logits
    assert torch.allclose(a, b, atol=1e-5), "sliding mask does not select the entries we think"

    return {
        "full_k": full_k[0],
        "full_v": full_v[0],
        "swa_k": swa_k[0],
        "swa_v": swa_v[0],
        "full_mask": full_mask,
        "swa_mask": swa_mask,
        "tokens": torch.tensor(rec["token"]),
        "hidden_in": torch.stack(rec["hidden_in"]),
        "logits": torch.stack(rec["logits"]),
        "hidden_out": torch.stack(rec["hidden_out"]),
        "selected_ids": torch.stack(rec["selected_ids"]) if rec["selected_ids"] else None,
        "selected_clusters": torch.stack(rec["selected_clusters"]) if rec["selected_clusters"] else None,
        "centroid_margin": rec["centroid_margin"],
    }


# --------------------------------------------------------------------------------------------
# 5. main
# --------------------------------------------------------------------------------------------
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="tests/fixtures", type=Path)
    args = ap.parse_args()
    out: Path = args.out

    assert torch.__version__.split("+")[0] == "2.13.0", f"needs torch==2.13.0, got {torch.__version__}"
    torch.manual_seed(SEED)
    np.random.seed(SEED)
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(SEED)

    names = ["target_text", "target_mm", "drafter_dense", "drafter_centroid"]
    out.mkdir(parents=True, exist_ok=True)
    for n in names:
        shutil.rmtree(out / n, ignore_errors=True)

    # 1. tokenizer
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sp_model = train_tokenizer(work)
        tok = build_hf_tokenizer(sp_model, work)
        turn_end_id = tok.convert_tokens_to_ids(TURN_END)
        eos_ids = [tok.eos_token_id, turn_end_id]
        for n in ["target_text", "target_mm"]:
            save_tokenizer(tok, sp_model, out / n)

    chat_ids = tok.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True)
    chat_ids = chat_ids["input_ids"] if isinstance(chat_ids, dict) or hasattr(chat_ids, "keys") else chat_ids

    # 2./3. models (the attention kernel is the plain eager one: no fused-kernel surprises)
    target = make_target(eos_ids, gen)
    mm = make_target_mm(target, eos_ids, gen)
    dense = make_drafter(False, eos_ids, gen)
    centroid = make_drafter(True, eos_ids, gen)
    for m in (target, mm, dense, centroid):
        m.set_attn_implementation("eager")
    save_model(target, out / "target_text", eos_ids)
    save_model(mm, out / "target_mm", eos_ids)
    save_model(dense, out / "drafter_dense", eos_ids)
    save_model(centroid, out / "drafter_centroid", eos_ids)

    # 4. references. Token sequences are random ids (special ids included) from a seeded generator.
    ref: dict[str, torch.Tensor] = {}
    meta: dict = {
        "seed": SEED,
        "sliding_window": WINDOW,
        "eos_token_id": eos_ids,
        "chat_hi_ids": list(chat_ids),
        "torch": torch.__version__,
    }
    rng = torch.Generator().manual_seed(SEED + 1)

    def rand_ids(n: int) -> torch.Tensor:
        ids = torch.randint(4, VOCAB, (n,), generator=rng)
        ids[0] = 2  # <bos>
        return ids

    # 4a. one pass
    for i, n in enumerate([7, 40]):
        ids = rand_ids(n)
        logits, hidden = target_one_pass(target, ids)
        mm_logits = mm(input_ids=ids[None], use_cache=False).logits[0]
        assert torch.allclose(logits, mm_logits, atol=1e-5), "multimodal layout disagrees with text layout"
        ref[f"target/prompt{i}/ids"] = ids.int()
        ref[f"target/prompt{i}/logits"] = logits
        ref[f"target/prompt{i}/hidden"] = hidden

    # 4b. incremental, 48 tokens, one at a time through the HF cache
    seq = rand_ids(48)
    inc_logits, inc_hidden = target_incremental(target, seq)
    full_logits, full_hidden = target_one_pass(target, seq)
    meta["incremental_vs_one_pass_max_abs_logit_diff"] = float((inc_logits - full_logits).abs().max())
    assert meta["incremental_vs_one_pass_max_abs_logit_diff"] < 5e-3  # f32 noise, grows with depth
    ref["target/incremental/ids"] = seq.int()
    ref["target/incremental/logits"] = inc_logits
    ref["target/incremental/hidden"] = inc_hidden

    # 4c. greedy generation
    meta["greedy_min_margin"] = {}
    for i, n in enumerate([5, 20, 40]):
        # Redraw the prompt (deterministically) until its greedy path has no near-tie, so a
        # port that is right to f32 noise (~1e-3 on logits) reproduces it token for token.
        for _ in range(100):
            ids = rand_ids(n)
            gen_ids, m = target_greedy(target, ids, 64)
            if float(m.min()) >= MIN_GREEDY_MARGIN:
                break
        else:
            raise RuntimeError(f"no greedy prompt of length {n} with margin >= {MIN_GREEDY_MARGIN}")
        ref[f"target/greedy{i}/prompt_ids"] = ids.int()
        ref[f"target/greedy{i}/ids"] = gen_ids.int()
        ref[f"target/greedy{i}/margins"] = m
        meta["greedy_min_margin"][f"greedy{i}"] = float(m.min())

    # 4d. drafter steps with explicit inputs, on the incremental sequence
    meta["drafter_positions"] = [5, 16, 17, 30]
    meta["drafter_steps"] = 3
    meta["drafter_min_margin"] = {}
    meta["centroid_min_cluster_margin"] = None
    for name, drafter in [("dense", dense), ("centroid", centroid)]:
        worst = float("inf")
        for p in meta["drafter_positions"]:
            r = drafter_steps(target, drafter, seq, p, meta["drafter_steps"])
            key = f"drafter_{name}/p{p}"
            for k in [
                "full_k",
                "full_v",
                "swa_k",
                "swa_v",
                "full_mask",
                "swa_mask",
                "tokens",
                "hidden_in",
                "logits",
                "hidden_out",
                "selected_ids",
                "selected_clusters",
            ]:
                if r[k] is None:
                    continue
                v = r[k]
                if v.dtype == torch.bool:
                    v = v.to(torch.uint8)
                elif not v.is_floating_point():
                    v = v.int()
                ref[f"{key}/{k}"] = v
            worst = min(worst, float(margins(r["logits"]).min()))
            if r["centroid_margin"]:
                cm = min(r["centroid_margin"])
                prev = meta["centroid_min_cluster_margin"]
                meta["centroid_min_cluster_margin"] = cm if prev is None else min(prev, cm)
        meta["drafter_min_margin"][name] = worst

    ref = {k: v.detach().contiguous().clone() for k, v in ref.items()}
    from safetensors.torch import save_file

    save_file(ref, str(out / "reference.safetensors"), metadata={"format": "pt"})
    meta["tensors"] = {k: [list(v.shape), str(v.dtype).replace("torch.", "")] for k, v in sorted(ref.items())}
    (out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(
        json.dumps(
            {
                k: meta[k]
                for k in [
                    "greedy_min_margin",
                    "drafter_min_margin",
                    "centroid_min_cluster_margin",
                    "chat_hi_ids",
                    "incremental_vs_one_pass_max_abs_logit_diff",
                ]
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
