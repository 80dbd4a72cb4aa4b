"""Train a small Gemma 4 target and distil its MTP drafter, so a machine without Gemma 4 weights
still has a real pair whose drafter is actually good (`specdec chat --demo`, tests, benchmarks).

How it works (numbered phases, as in `main`):
  1. corpus     Python's own documentation, present in every installation: `inspect.getdoc` over
                the standard library (modules, classes, functions, methods) and
                `pydoc_data.topics.topics`. Every entry becomes a plain document
                ("name\\n\\ndocstring") and a chat sample (user asks about the name, the model
                answers with the docstring's opening paragraphs) in Gemma 4's turn format. A seeded
                5% of entries (chosen by a hash of the name) is held out for evaluation and held-out loss.
  2. tokenizer  sentencepiece BPE, vocab 4096, byte fallback, Gemma's special ids and chat
                template (scripts/fixtures/gemma_tokenizer.py, shared with the test fixtures).
  3. target     transformers' own `Gemma4ForCausalLM` (so the architecture is exactly Gemma 4)
                with every E2B feature at small scale: per-layer input embeddings, KV sharing
                (the last 3 of 8 layers reuse K/V), sliding (window 128) and full attention
                (every 4th layer, partial rotary), double-wide MLP in the shared layers, logit
                softcapping 30, tied embeddings. Next-token loss on random 256-token windows of
                the packed corpus, AdamW, linear warm-up then cosine decay.
  4. drafter    a `Gemma4AssistantForCausalLM` (4 layers [s,s,s,f], dense tied head, every layer
                reads the target's shared K/V) distilled from the frozen target on the target's
                own continuations of corpus prompts (greedy and temperature 0.7) and on corpus
                windows. One target pass per sequence gives logits, final-normed hidden states
                and shared K/V; then every position p of the sequence is a draft round at once:
                step 1 reads cat(scaled_embed(x_p), h_{p-1}) at position p and attends to the
                target's K/V of positions 0..p-1 (full layer) / p-W-1..p-1 (sliding layer, W+1
                entries), each later step reads cat(scaled_embed(token), post_projection of the
                previous step). Step inputs are the sequence's own next tokens (on greedy
                continuations: exactly the tokens an all-accepted greedy round feeds back).
                Loss: KL(target distribution at p+j || drafter step j+1), k = 4 steps. The script
                asserts once that this batched path equals the assistant's own `forward` for
                single positions, inside and past the sliding window.
  5. evaluate   a plain torch speculative loop on held-out prompts (one full target pass per
                round, drafter via its own `forward`): greedy at k = 1..4 (and a check that the
                output is the target's greedy output) and rejection sampling at temperature 0.7
                with k = 4: mean accepted drafts per round, per-position acceptance, histogram.
  6. write      Hugging Face folders OUT/target and OUT/drafter (weights, config.json,
                generation_config.json with eos ids [<eos>, <turn|>], tokenizer files) and
                OUT/metrics.json. `specdec convert` turns them into the bundle shipped as
                mlx_specdec/demo/; the weights themselves are never committed.

Runtime: about 18 minutes on two idle CPU cores (target 8 min, continuations 20 s, drafter
10 min, evaluation 10 s), more on busy cores. Progress goes to stdout; the figures land in
OUT/metrics.json (the run behind mlx_specdec/demo, Python 3.11: target held-out loss 3.64 nats;
greedy mean accepted drafts per round 0.88 / 1.52 / 2.03 / 2.42 at k = 1..4; 2.28 at k = 4 and
temperature 0.7, measured here in torch; the MLX figures of the shipped 8-bit bundle are in
mlx_specdec/demo/README.md, from scripts/demo/measure_demo_pair.py).
Deterministic: every draw comes from seeded generators and sentencepiece trains on one thread;
a rerun with the same library versions, Python version (its docstrings are the corpus) and
thread count gives the same weights.

Requires (pinned; never an unpinned torch, which pulls a multi-GB CUDA build):
    torch==2.13.0 (CPU build), transformers==5.24.*, sentencepiece==0.2.*, safetensors
Why torch: training needs autograd through transformers' reference Gemma 4 classes, which are
the definition our MLX port is tested against; and MLX's Linux CPU wheel links reference BLAS,
which makes training ~25x slower than torch on the same cores.

Usage:
    python scripts/demo/train_demo_pair.py [--out build/demo_hf] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also importable from tests
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))  # the shared tokenizer builder
from demo_corpus import CHAT_QUESTIONS, chat_answer, split_corpus, stdlib_entries  # noqa: E402
from gemma_tokenizer import build_tokenizer, end_of_turn_ids  # noqa: E402

SEED = 0
VOCAB = 4096
WINDOW = 128
TARGET_BATCH, TARGET_LENGTH = 8, 256  # windows cross the sliding window twice
DRAFTER_BATCH, DRAFTER_LENGTH = 6, 256
K_DRAFT = 4  # drafter steps unrolled in training, and the shipped num_assistant_tokens
TARGET_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    global_head_dim=64,
    layer_types=["sliding_attention"] * 3 + ["full_attention"] + ["sliding_attention"] * 3 + ["full_attention"],
    sliding_window=WINDOW,
    final_logit_softcapping=30.0,
    hidden_size_per_layer_input=16,
    vocab_size_per_layer_input=VOCAB,
    num_kv_shared_layers=3,
    use_double_wide_mlp=True,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)
DRAFTER_TEXT_CONFIG = dict(
    vocab_size=VOCAB,
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=1,
    head_dim=32,
    global_head_dim=64,
    layer_types=["sliding_attention"] * 3 + ["full_attention"],
    sliding_window=WINDOW,
    final_logit_softcapping=None,
    hidden_size_per_layer_input=0,
    vocab_size_per_layer_input=0,
    num_kv_shared_layers=4,
    use_double_wide_mlp=False,
    tie_word_embeddings=True,
    max_position_embeddings=8192,
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def samples(pairs, tok, rng: random.Random) -> list[list[int]]:
    """Token ids of every sample: a plain document and a chat turn per (name, doc) pair."""
    out = []
    for name, doc in pairs:
        out.append(tok(f"{name}\n\n{doc}").input_ids + [tok.eos_token_id])
        question = rng.choice(CHAT_QUESTIONS).format(name)
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": chat_answer(doc)}]
        out.append(tok.apply_chat_template(chat, tokenize=True, return_dict=False))
    rng.shuffle(out)
    return out


def windows(stream: torch.Tensor, batch: int, length: int, gen: torch.Generator) -> torch.Tensor:
    """batch random windows of `length` tokens from the packed stream: [batch, length]."""
    starts = torch.randint(0, len(stream) - length, (batch,), generator=gen)
    return torch.stack([stream[s : s + length] for s in starts.tolist()])


# --------------------------------------------------------------------------------------------
# 3. target
# --------------------------------------------------------------------------------------------
def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))


def optimiser_step(opt, model, loss, losses: list, label: str, last: bool, t0: float) -> None:
    """Backward, clip to norm 1, step; log the mean of the last 25 losses every 25 steps."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    losses.append(loss.item())
    if len(losses) % 25 == 1 or last:
        log(f"{label} {sum(losses[-25:]) / len(losses[-25:]):.3f} ({time.time() - t0:.0f}s)")


def train_target(target, stream, steps, batch, length, gen) -> list[float]:
    opt = torch.optim.AdamW(target.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    target.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 3e-3, warmup=min(50, steps // 10 + 1))
        ids = windows(stream, batch, length, gen)
        loss = target(input_ids=ids, labels=ids).loss
        optimiser_step(opt, target, loss, losses, f"target step {step}/{steps} loss", step == steps - 1, t0)
    target.eval()
    return losses


@torch.no_grad()
def heldout_loss(target, stream, length: int, max_windows: int = 48) -> float:
    n = min(max_windows, (len(stream) - 1) // length)
    ids = stream[: n * length].view(n, length)
    return (
        sum(
            target(input_ids=ids[i : i + 8], labels=ids[i : i + 8]).loss.item() * len(ids[i : i + 8])
            for i in range(0, n, 8)
        )
        / n
    )


def softcap(target, h: torch.Tensor) -> torch.Tensor:
    logits = target.lm_head(h)
    cap = target.config.final_logit_softcapping
    return torch.tanh(logits / cap) * cap if cap else logits


def target_pass(target, ids: torch.Tensor):
    """One full target pass over ids [B, T] -> (logits [B,T,V], final-normed hidden [B,T,H],
    shared K/V {layer_type: (K, V) [B, kv_heads, T, head_dim]})."""
    out = target.model(input_ids=ids, use_cache=False, return_shared_kv_states=True)
    kv = {k: out.shared_kv_states[k] for k in ("full_attention", "sliding_attention")}
    return softcap(target, out.last_hidden_state), out.last_hidden_state, kv


# --------------------------------------------------------------------------------------------
# 4. drafter
# --------------------------------------------------------------------------------------------
def draft_masks(positions: torch.Tensor, kv_len: int, window: int) -> dict[str, torch.Tensor]:
    """Boolean masks [1, 1, P, kv_len] for drafter queries at `positions` (a round at p sees the
    target's K/V of 0..p-1 in full layers and of p-W-1..p-1, i.e. W+1 entries, in sliding ones)."""
    t = torch.arange(kv_len)[None, :]
    p = positions[:, None]
    full = t < p
    sliding = full & (t >= p - window - 1)
    return {"full_attention": full[None, None], "sliding_attention": sliding[None, None]}


def draft_batched(drafter, embed, h_prev, kv, step_tokens, positions, window):
    """Run len(step_tokens) drafter steps for many rounds at once.

    h_prev [B, P, H_target]: target hidden at p-1 for each round position p in positions [P];
    step_tokens: list of [B, P] token ids fed to each step (step 1: the bonus tokens x_p);
    kv: the target's shared K/V over the whole sequence. Returns a list of logits [B, P, V].
    """
    batch, n_pos = h_prev.shape[:2]
    masks = draft_masks(positions, kv["full_attention"][0].shape[2], window)
    position_ids = positions[None].expand(batch, n_pos)
    h, all_logits = h_prev, []
    for tokens in step_tokens:
        x = drafter.pre_projection(torch.cat([embed(tokens), h], dim=-1))
        # logits_to_keep as a slice: keeps transformers from slicing the (absent) per-layer
        # inputs at the first KV-shared layer, which is layer 0 in the drafter.
        out = drafter.model(
            inputs_embeds=x,
            position_ids=position_ids,
            attention_mask=masks,
            shared_kv_states=kv,
            use_cache=False,
            logits_to_keep=slice(None),
        )
        h = drafter.post_projection(out.last_hidden_state)
        all_logits.append(drafter.lm_head(out.last_hidden_state))
    return all_logits


@torch.no_grad()
def check_batched_matches_forward(target, drafter, ids: torch.Tensor, window: int) -> float:
    """Assert the batched training path equals Gemma4AssistantForCausalLM.forward, step by step."""
    _, hidden, kv = target_pass(target, ids[None])
    embed = target.model.embed_tokens
    checks = [5, window - 3, window + 2, ids.shape[0] - K_DRAFT - 1]
    positions = torch.tensor(checks)
    tokens = [ids[positions + j][None] for j in range(K_DRAFT)]
    batched = draft_batched(drafter, embed, hidden[:, positions - 1], kv, tokens, positions, window)
    worst = 0.0
    for i, p in enumerate(checks):
        h = hidden[:, p - 1 : p]
        sliced = {k: (v[0][:, :, :p], v[1][:, :, :p]) for k, v in kv.items()}
        for j in range(K_DRAFT):
            out = drafter(
                inputs_embeds=torch.cat([embed(ids[p + j].view(1, 1)), h], dim=-1),
                position_ids=torch.tensor([[p]]),
                shared_kv_states=sliced,
            )
            diff = (out.logits[0, 0] - batched[j][0, i]).abs().max().item()
            worst = max(worst, diff)
            assert diff < 1e-4, f"batched drafter path differs from forward at p={p} step {j + 1}: {diff}"
            h = out.last_hidden_state
    return worst


@torch.no_grad()
def continuations(target, stream, n, prompt_len, total_len, batch, gen, temperature):
    """The target's own continuations of random corpus prompts: [n, total_len]."""
    seqs = []
    for _ in range(0, n, batch):
        prompts = windows(stream, batch, prompt_len, gen)
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        out = target.generate(
            input_ids=prompts,
            attention_mask=torch.ones_like(prompts),
            max_new_tokens=total_len - prompt_len,
            min_new_tokens=total_len - prompt_len,
            do_sample=temperature > 0,
            temperature=temperature if temperature > 0 else None,
            top_k=None,
            top_p=None,
            eos_token_id=None,
            pad_token_id=0,
        )
        seqs.append(out)
    return torch.cat(seqs)[:n]


def train_drafter(target, drafter, pool, stream, steps, batch, length, gen) -> list[float]:
    opt = torch.optim.AdamW(drafter.parameters(), lr=2e-3, betas=(0.9, 0.95), weight_decay=0.01)
    embed = target.model.embed_tokens
    positions = torch.arange(1, length - K_DRAFT + 1)  # every p with h_{p-1} and K targets
    drafter.train()
    losses, t0 = [], time.time()
    n_pool = batch * 2 // 3
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 2e-3, warmup=min(30, steps // 10 + 1))
        pick = torch.randint(0, len(pool), (n_pool,), generator=gen)
        ids = torch.cat([pool[pick, :length], windows(stream, batch - n_pool, length, gen)])
        with torch.no_grad():
            logits, hidden, kv = target_pass(target, ids)
            target_logp = F.log_softmax(logits.float(), dim=-1)
        tokens = [ids[:, positions + j] for j in range(K_DRAFT)]
        draft_logits = draft_batched(drafter, embed, hidden[:, positions - 1], kv, tokens, positions, WINDOW)
        loss = 0.0
        for j, dl in enumerate(draft_logits):
            tlp = target_logp[:, positions + j]  # the target's distribution for token p+j+1
            loss = loss + F.kl_div(F.log_softmax(dl, dim=-1), tlp, log_target=True, reduction="none").sum(-1).mean()
        loss = loss / K_DRAFT
        optimiser_step(opt, drafter, loss, losses, f"drafter step {step}/{steps} KL", step == steps - 1, t0)
    drafter.eval()
    return losses


# --------------------------------------------------------------------------------------------
# 5. evaluate
# --------------------------------------------------------------------------------------------
def pick(logits: torch.Tensor, temperature: float, gen: torch.Generator) -> tuple[int, torch.Tensor | None]:
    if temperature == 0:
        return int(logits.argmax()), None
    probs = torch.softmax(logits / temperature, dim=-1)
    return int(torch.multinomial(probs, 1, generator=gen)), probs


@torch.no_grad()
def speculative_run(
    target,
    drafter,
    prompt: list[int],
    k: int,
    max_new: int,
    temperature: float,
    gen: torch.Generator,
    stop_ids: set[int],
):
    """A naive speculative loop (full target pass per round, no caches); returns (new tokens,
    accepted drafts per round)."""
    embed = target.model.embed_tokens
    seq = list(prompt)
    logits, hidden, kv = target_pass(target, torch.tensor([seq]))
    bonus, _ = pick(logits[0, -1], temperature, gen)
    new, accepted = [], []
    while len(new) < max_new and not (set(new) & stop_ids):
        p = len(seq)  # the bonus token's position; the target has seen 0..p-1
        seq.append(bonus)
        new.append(bonus)
        # 1. draft at the fixed position p from (x_p, h_{p-1}) over the target's K/V of 0..p-1
        sliced = {name: (kk[:, :, :p], vv[:, :, :p]) for name, (kk, vv) in kv.items()}
        h, x, drafts, q_probs = hidden[:, p - 1 : p], bonus, [], []
        for _ in range(k):
            out = drafter(
                inputs_embeds=torch.cat([embed(torch.tensor([[x]])), h], dim=-1),
                position_ids=torch.tensor([[p]]),
                shared_kv_states=sliced,
            )
            x, q = pick(out.logits[0, 0], temperature, gen)
            drafts.append(x)
            q_probs.append(q)
            h = out.last_hidden_state
        # 2. verify: one target pass over [.., x_p, d_1..d_k]; rows p..p+k judge d_1..d_k, bonus
        logits, hidden, kv = target_pass(target, torch.tensor([seq + drafts]))
        rows = logits[0, p : p + k + 1]
        # 3. accept
        n_ok = 0
        for i, d in enumerate(drafts):
            if temperature == 0:
                ok = d == int(rows[i].argmax())
            else:
                p_i = torch.softmax(rows[i] / temperature, dim=-1)
                ok = float(torch.rand((), generator=gen)) < min(1.0, float(p_i[d] / q_probs[i][d]))
            if not ok:
                break
            n_ok += 1
        accepted.append(n_ok)
        seq += drafts[:n_ok]
        new += drafts[:n_ok]
        if n_ok == k or temperature == 0:
            bonus, _ = pick(rows[n_ok], temperature, gen)
        else:  # rejection: draw from norm(max(0, p - q))
            residual = (torch.softmax(rows[n_ok] / temperature, -1) - q_probs[n_ok]).clamp_min(0)
            bonus = int(torch.multinomial(residual / residual.sum(), 1, generator=gen))
        # 4. rewind is implicit: the next round's pass reads K/V and h of accepted positions only
    return new[:max_new], accepted


def acceptance_stats(rounds: list[int], k: int) -> dict:
    reached = [sum(a >= i for a in rounds) for i in range(k)]
    passed = [sum(a >= i + 1 for a in rounds) for i in range(k)]
    return {
        "rounds": len(rounds),
        "mean_accepted_per_round": sum(rounds) / max(1, len(rounds)),
        "tokens_per_round": 1 + sum(rounds) / max(1, len(rounds)),
        "per_position_acceptance": [passed[i] / max(1, reached[i]) for i in range(k)],
        "histogram": [sum(a == n for a in rounds) for n in range(k + 1)],
    }


@torch.no_grad()
def evaluate(target, drafter, prompts, max_new, stop_ids, gen, temperatures=(0.0, 0.7)) -> dict:
    results = {}
    for temperature in temperatures:
        for k in [1, 2, 3, 4] if temperature == 0 else [K_DRAFT]:
            rounds, exact = [], 0
            for prompt in prompts:
                new, acc = speculative_run(target, drafter, prompt, k, max_new, temperature, gen, stop_ids)
                rounds += acc
                if temperature == 0:  # the output must be the target's own greedy continuation
                    logits, _, _ = target_pass(target, torch.tensor([prompt + new]))
                    exact += bool((logits[0, len(prompt) - 1 : -1].argmax(-1) == torch.tensor(new)).all())
            stats = acceptance_stats(rounds, k)
            if temperature == 0:
                stats["greedy_output_equals_target"] = f"{exact}/{len(prompts)}"
            results[f"T{temperature}_k{k}"] = stats
            log(
                f"eval T={temperature} k={k}: mean accepted {stats['mean_accepted_per_round']:.2f}, "
                f"per position {[round(x, 2) for x in stats['per_position_acceptance']]}"
            )
    return results


def eval_prompts(held, tok, rng: random.Random, n_each: int) -> list[list[int]]:
    """Held-out prompts: chat questions (generation prompt) and document openings."""
    prompts = []
    for name, _ in held[:n_each]:
        chat = [{"role": "user", "content": rng.choice(CHAT_QUESTIONS).format(name)}]
        prompts.append(tok.apply_chat_template(chat, tokenize=True, add_generation_prompt=True, return_dict=False))
    for name, doc in held[n_each : 2 * n_each]:
        prompts.append(tok(f"{name}\n\n{doc}").input_ids[:40])
    return prompts


# --------------------------------------------------------------------------------------------
# 6. write
# --------------------------------------------------------------------------------------------
def save_model(model, folder: Path, tok_dir: Path, eos_ids: list[int], extra_config: dict) -> None:
    model.generation_config.eos_token_id = eos_ids
    model.generation_config.bos_token_id = 2
    model.generation_config.pad_token_id = 0
    model.save_pretrained(folder)
    config_path = folder / "config.json"
    config = json.loads(config_path.read_text())
    config.update(extra_config)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    for f in tok_dir.iterdir():
        if f.name.startswith("tokenizer") or f.name == "chat_template.jinja":
            shutil.copy(f, folder / f.name)


def main() -> None:
    from transformers import Gemma4AssistantConfig, Gemma4AssistantForCausalLM, Gemma4ForCausalLM, Gemma4TextConfig
    from transformers.utils import logging as hf_logging

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="build/demo_hf")
    ap.add_argument("--quick", action="store_true", help="a two-minute smoke run (tiny step counts)")
    ap.add_argument("--target-steps", type=int, default=750)
    ap.add_argument("--drafter-steps", type=int, default=1000)
    ap.add_argument("--continuations", type=int, default=384, help="target continuations the drafter trains on")
    args = ap.parse_args()
    q = args.quick
    target_steps = 4 if q else args.target_steps
    drafter_steps = 4 if q else args.drafter_steps
    n_continuations, n_eval_each, max_new = (16, 2, 24) if q else (args.continuations, 6, 64)

    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    hf_logging.set_verbosity_error()
    rng, gen = random.Random(SEED), torch.Generator().manual_seed(SEED)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, timings = time.time(), {}

    # 1. corpus
    pairs = stdlib_entries()
    train_pairs, held_pairs = split_corpus(pairs)
    log(f"corpus: {len(pairs)} entries ({sum(len(d) for _, d in pairs) / 1e6:.2f}M chars), {len(held_pairs)} held out")

    # 2. tokenizer (trained on training entries only; sentencepiece wants single lines)
    tok_dir = out / "tokenizer"
    lines = [line for _, doc in train_pairs for line in doc.split("\n") if line.strip()]
    tok = build_tokenizer(lines, VOCAB, tok_dir)
    eos_ids = end_of_turn_ids(tok)
    train_stream = torch.tensor([t for s in samples(train_pairs, tok, rng) for t in s])
    held_stream = torch.tensor([t for s in samples(held_pairs, tok, rng) for t in s])
    log(f"tokens: train {len(train_stream)}, held-out {len(held_stream)}; eos ids {eos_ids}")
    timings["corpus_and_tokenizer_s"] = time.time() - t_start

    # 3. target
    t0 = time.time()
    target_config = Gemma4TextConfig(**TARGET_CONFIG, eos_token_id=eos_ids, bos_token_id=2, pad_token_id=0)
    target = Gemma4ForCausalLM(target_config)
    n_target = sum(p.numel() for p in target.parameters())
    log(f"target: {n_target / 1e6:.2f}M parameters")
    target_losses = train_target(target, train_stream, target_steps, TARGET_BATCH, TARGET_LENGTH, gen)
    target.requires_grad_(False)
    held_loss = heldout_loss(target, held_stream, TARGET_LENGTH)
    train_loss = heldout_loss(target, train_stream, TARGET_LENGTH)
    timings["target_s"] = time.time() - t0
    log(f"target trained in {timings['target_s']:.0f}s: train loss {train_loss:.3f}, held-out loss {held_loss:.3f}")

    # 4. drafter
    t0 = time.time()
    drafter_config = Gemma4AssistantConfig(
        text_config=Gemma4TextConfig(**DRAFTER_TEXT_CONFIG, eos_token_id=eos_ids, bos_token_id=2, pad_token_id=0),
        backbone_hidden_size=TARGET_CONFIG["hidden_size"],
        use_ordered_embeddings=False,
        tie_word_embeddings=True,
    )
    drafter = Gemma4AssistantForCausalLM(drafter_config)
    # Same width as the target: start the drafter's tied embedding/head from the target's.
    drafter.model.embed_tokens.weight.data.copy_(target.model.embed_tokens.weight.data)
    n_drafter = sum(p.numel() for p in drafter.parameters())
    log(f"drafter: {n_drafter / 1e6:.2f}M parameters")
    worst = check_batched_matches_forward(target, drafter, train_stream[: 2 * WINDOW + 16], WINDOW)
    log(f"batched drafter path == Gemma4AssistantForCausalLM.forward (max |diff| {worst:.1e})")
    half = n_continuations // 2
    pool = torch.cat(
        [
            continuations(target, train_stream, half, 48, DRAFTER_LENGTH, 48, gen, temperature=0.0),
            continuations(target, train_stream, n_continuations - half, 48, DRAFTER_LENGTH, 48, gen, temperature=0.7),
        ]
    )
    timings["continuations_s"] = time.time() - t0
    log(f"{len(pool)} continuations in {timings['continuations_s']:.0f}s")
    t1 = time.time()
    drafter_losses = train_drafter(
        target, drafter, pool, train_stream, drafter_steps, DRAFTER_BATCH, DRAFTER_LENGTH, gen
    )
    timings["drafter_s"] = time.time() - t1

    # 5. evaluate
    t0 = time.time()
    prompts = eval_prompts(held_pairs, tok, rng, n_eval_each)
    acceptance = evaluate(target, drafter, prompts, max_new, set(eos_ids), torch.Generator().manual_seed(SEED + 1))
    timings["evaluate_s"] = time.time() - t0

    # 6. write
    drafter.generation_config.num_assistant_tokens = K_DRAFT
    drafter.generation_config.num_assistant_tokens_schedule = "constant"
    global_head = {"global_head_dim": TARGET_CONFIG["global_head_dim"]}  # mlx-lm reads this key
    save_model(target, out / "target", tok_dir, eos_ids, global_head)
    save_model(drafter, out / "drafter", tok_dir, eos_ids, {})
    timings["total_s"] = time.time() - t_start
    metrics = {
        "seed": SEED,
        "quick": q,
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "target": {
            "parameters": n_target,
            "steps": target_steps,
            "batch": TARGET_BATCH,
            "length": TARGET_LENGTH,
            "final_train_loss": sum(target_losses[-25:]) / len(target_losses[-25:]),
            "train_loss": train_loss,
            "heldout_loss": held_loss,
            "config": TARGET_CONFIG,
        },
        "drafter": {
            "parameters": n_drafter,
            "steps": drafter_steps,
            "batch": DRAFTER_BATCH,
            "length": DRAFTER_LENGTH,
            "k": K_DRAFT,
            "continuations": len(pool),
            "final_kl": sum(drafter_losses[-25:]) / len(drafter_losses[-25:]),
            "config": DRAFTER_TEXT_CONFIG,
            "batched_vs_forward_max_diff": worst,
        },
        "eval": {"prompts": len(prompts), "max_new_tokens": max_new, "acceptance": acceptance},
        "timings": timings,
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    log(f"wrote {out / 'target'}, {out / 'drafter'}, {out / 'metrics.json'} in {timings['total_s']:.0f}s")


if __name__ == "__main__":
    main()
