"""Measure each per-module quantisation choice of `specdec convert` against the float32 pair.

For every choice the pair is converted with `weights_convert.convert` (the real pipeline) and
loaded with `mlx_specdec.load`, then compared with the unquantised bundle on fixed prompts:

target rows (drafter left in floats):
    max |dlogit|   largest absolute logit difference over all positions
    KL             mean KL(p_float || p_quant) per position, nats
    top-1          fraction of positions whose argmax is unchanged
drafter rows (target left in floats, so only the drafter changes):
    accepted/round greedy speculative rounds simulated at every position of the float
                   target's greedy continuation (k drafts; the count of drafts equal to the
                   target's own next tokens)
    agree          fraction of draft steps whose argmax equals the float drafter's, fed the
                   same inputs (the drafter's own error, independent of how good it is)
    KL             mean KL(q_float || q_quant) of the drafter's distributions
size: bytes of the module's folder in the bundle.

Usage (the fixtures' widths are 32..160, so group size 32 is the one that quantises them):
    python scripts/measure/measure_quantisation.py \
        --target tests/fixtures/target_text --drafter tests/fixtures/drafter_centroid --group-size 32
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import mlx.core as mx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlx_specdec.cache import drafter_kv, make_target_cache  # noqa: E402
from mlx_specdec.load import load  # noqa: E402
from mlx_specdec.models.quantise import FLOAT, FOLLOW  # noqa: E402
from weights_convert import convert  # noqa: E402

PROMPTS = [
    "Return a new list containing all items from the iterable in ascending order.",
    "The dataclass decorator examines the class to find fields.",
    "Open the file and return a corresponding file object.",
    "Split the string at the first occurrence of sep, and return a tuple.",
]
NEW_TOKENS = 40
DRAFTS = 4

# Module groups (fnmatch patterns of module paths, as in weights_convert/quantise.py rules).
TARGET_GROUPS = {
    "embeddings (tied head)": ["model.embed_tokens"],
    "per-layer embeddings": ["model.embed_tokens_per_layer"],
    "per-layer projections": ["model.per_layer_model_projection", "model.layers.*.per_layer_*"],
    "attention": ["model.layers.*.self_attn.*"],
    "MLP": ["model.layers.*.mlp.*"],
}
DRAFTER_GROUPS = {
    "head (embed_tokens)": ["model.embed_tokens"],
    "centroids": ["masked_embedding.centroids"],
    "pre/post projections": ["pre_projection", "post_projection"],
    "attention": ["model.layers.*.self_attn.*"],
    "MLP": ["model.layers.*.mlp.*"],
}


def choices(groups: dict, bits: int) -> dict:
    """Rows: all at --bits; all at 8; then per group: only it at --bits (sensitivity), and
    everything at --bits but it at 8 bits / in floats (what a default would change)."""
    rows = {f"all {bits}-bit": {}, "all 8-bit": {"*": 8}}
    for name, patterns in groups.items():
        rows[f"only {name} {bits}-bit"] = {**{p: FOLLOW for p in patterns}, "*": FLOAT}
        rows[f"{name} 8-bit, rest {bits}"] = {p: 8 for p in patterns}
        rows[f"{name} float, rest {bits}"] = {p: FLOAT for p in patterns}
    rows["defaults (quantise.py)"] = None  # convert() then uses the shipped rules
    return rows


def kl(p_logits: mx.array, q_logits: mx.array) -> mx.array:
    """Mean over rows of KL(softmax(p) || softmax(q)); inputs [..., V]."""
    lp = p_logits - mx.logsumexp(p_logits, axis=-1, keepdims=True)
    lq = q_logits - mx.logsumexp(q_logits, axis=-1, keepdims=True)
    return (mx.exp(lp) * (lp - lq)).sum(-1).mean()


def target_logits(bundle, ids: list[int]) -> mx.array:
    cache = make_target_cache(bundle.target.config)
    logits, _ = bundle.target(mx.array([ids]), cache)
    return logits[0].astype(mx.float32)


def greedy(bundle, ids: list[int], n: int) -> list[int]:
    cache = make_target_cache(bundle.target.config)
    logits, _ = bundle.target(mx.array([ids]), cache)
    out = list(ids)
    for _ in range(n):
        out.append(mx.argmax(logits[0, -1]).item())
        logits, _ = bundle.target(mx.array([[out[-1]]]), cache)
    return out


def drafter_rounds(bundle, seq: list[int], start: int, reference=None):
    """Simulate one greedy round at every position p >= start of the target's greedy `seq`.

    Yields (accepted, drafter logits per step [k, V]); with `reference` (a float drafter) the
    same inputs also go through it and its logits come third.
    """
    target = bundle.target
    cache = make_target_cache(target.config)
    _, hidden = target(mx.array([seq[:start]]), cache)
    for p in range(start, len(seq) - DRAFTS):
        kv = drafter_kv(cache, target.kv_layers)
        x, h = seq[p], hidden[:, -1:]
        accepted, matching, ours, theirs = 0, True, [], []
        for i in range(DRAFTS):
            emb = target.embed(mx.array([[x]]))
            logits, h_next = bundle.drafter(emb, h, kv, p)
            ours.append(logits[0, 0].astype(mx.float32))
            if reference is not None:
                theirs.append(reference(emb, h, kv, p)[0][0, 0].astype(mx.float32))
            x = mx.argmax(logits[0, 0]).item()
            matching = matching and x == seq[p + 1 + i]
            accepted += matching
            h = h_next
        yield accepted, mx.stack(ours), (mx.stack(theirs) if theirs else None)
        _, hidden = target(mx.array([[seq[p]]]), cache)


def measure(args) -> None:
    work = Path(tempfile.mkdtemp(prefix="measure-quant-"))  # left behind for inspection

    def build(name, bits, target_rules=None, drafter_rules=None):
        out = work / name
        convert(
            args.target,
            args.drafter,
            out,
            bits=bits,
            group_size=args.group_size,
            target_rules=target_rules,
            drafter_rules=drafter_rules,
        )
        return out, load(out)

    def size(folder: Path) -> int:
        return sum(f.stat().st_size for f in folder.glob("*.safetensors"))

    ref_path, ref = build("float", 16)
    prompts = [ref.tokenizer.encode(p) for p in PROMPTS]
    seqs = [greedy(ref, ids, NEW_TOKENS) for ids in prompts]
    ref_logits = [target_logits(ref, s) for s in seqs]
    ref_accept = mx.mean(
        mx.array([a for s, ids in zip(seqs, prompts) for a, _, _ in drafter_rounds(ref, s, len(ids))])
    ).item()

    print(
        f"fixtures: target {args.target}, drafter {args.drafter}; --bits {args.bits}, "
        f"--group-size {args.group_size}; {len(PROMPTS)} prompts x {NEW_TOKENS} greedy tokens, k={DRAFTS}"
    )
    print("\ntarget (drafter in floats)                  max|dlogit|   KL(nats)   top-1    size")
    print(f"  {'float (reference)':40} {0:10.4f} {0:10.5f} {1:8.3f} {size(ref_path / 'target'):8d}")
    for i, (name, rules) in enumerate(choices(TARGET_GROUPS, args.bits).items()):
        path, b = build(f"target-{i}", args.bits, target_rules=rules, drafter_rules=_all_float(ref.drafter))
        errs, kls, agree, n = 0.0, 0.0, 0, 0
        for s, r in zip(seqs, ref_logits):
            q = target_logits(b, s)
            errs = max(errs, mx.abs(q - r).max().item())
            kls += kl(r, q).item() * len(s)
            agree += (mx.argmax(q, -1) == mx.argmax(r, -1)).sum().item()
            n += len(s)
        print(f"  {name:40} {errs:10.4f} {kls / n:10.5f} {agree / n:8.3f} {size(path / 'target'):8d}")

    print("\ndrafter (target in floats)                  accepted/round   agree   KL(nats)   size")
    print(f"  {'float (reference)':40} {ref_accept:10.3f} {1:12.3f} {0:10.5f} {size(ref_path / 'drafter'):6d}")
    for i, (name, rules) in enumerate(choices(DRAFTER_GROUPS, args.bits).items()):
        path, b = build(f"drafter-{i}", args.bits, target_rules=_all_float(ref.target.model), drafter_rules=rules)
        acc, agree, kls, n = [], 0, 0.0, 0
        for s, ids in zip(seqs, prompts):
            for a, ours, theirs in drafter_rounds(b, s, len(ids), reference=ref.drafter):
                acc.append(a)
                agree += (mx.argmax(ours, -1) == mx.argmax(theirs, -1)).sum().item()
                kls += kl(theirs, ours).item() * ours.shape[0]
                n += ours.shape[0]
        print(
            f"  {name:40} {mx.mean(mx.array(acc)).item():10.3f} {agree / n:12.3f} {kls / n:10.5f} "
            f"{size(path / 'drafter'):6d}"
        )


def _all_float(model) -> dict:
    """Rules that keep every quantisable module of `model` in floats."""
    return {path: FLOAT for path, m in model.named_modules() if hasattr(m, "to_quantized")}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", default="tests/fixtures/target_text")
    parser.add_argument("--drafter", default="tests/fixtures/drafter_centroid")
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--group-size", type=int, default=32)
    measure(parser.parse_args())
