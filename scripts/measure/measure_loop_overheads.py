"""Measure the loop's host-side costs that `mx.compile` or dtype choices could cut, on a synthetic
drafter at a family's real shapes (only the drafter is built: its K/V inputs are random tensors of
the target's shapes).

    python scripts/measure/measure_loop_overheads.py [--family e2b] [--context 256] [--repeats 50]

Prints, per item, the eager and the candidate figure; keep a change only where it wins:
  drafter step   graph-building (host) time and evaluated time of one step, eager vs with its
                 fixed-shape part (the head) compiled
  accept maths   accept_greedy over [k+1, V] logits: host time and evaluated time, eager vs compiled
  argmax         over [k+1, V] logits in their own dtype vs a float32 copy
  target graph   host time to build (not evaluate) the target's forward over 1 and k+1 tokens: a
                 lazily made model (never evaluated, so no memory), quantised modules as convert
  prefill chunk  with --prefill N: the whole target is built too, and a prefill of N random
                 tokens is timed at each chunk size in --chunks (decode.PREFILL_CHUNK)
"""

from __future__ import annotations

import argparse
import statistics
import time

import mlx.core as mx


def timed(fn, repeats: int) -> float:
    fn()
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return statistics.median(out)


def main() -> None:
    from mlx_specdec.bench import synthetic
    from mlx_specdec.models import quantise
    from mlx_specdec.models.drafter import Drafter, DrafterArgs
    from mlx_specdec.sampling import accept_greedy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", default="e2b")
    ap.add_argument("--context", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=50)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--prefill", type=int, default=0, help="prompt tokens for the prefill-chunk sweep (0: skip)")
    ap.add_argument("--chunks", default="128,256,512,1024,2048")
    args = ap.parse_args()
    target_graph(args)
    if args.prefill:
        prefill_chunks(args)

    fam = synthetic.family_config(args.family)
    dargs = DrafterArgs.from_config(fam["drafter"])
    drafter = Drafter(dargs)
    synthetic._materialise(
        drafter, quantise.plan(drafter, quantise.DRAFTER_RULES, 4, 64), mx.random.key(0), mx.bfloat16
    )
    t, H, p = dargs.text, dargs.backbone_hidden_size, args.context
    kv_heads = t["num_key_value_heads"]
    full_heads = t.get("num_global_key_value_heads") or kv_heads if t.get("attention_k_eq_v") else kv_heads
    window = t["sliding_window"]

    def rnd(*shape):
        return mx.random.normal(shape).astype(mx.bfloat16)

    kv = {
        "sliding_attention": (rnd(1, kv_heads, min(p, window + 1), t["head_dim"]),) * 2,
        "full_attention": (rnd(1, full_heads, p, t["global_head_dim"]),) * 2,
    }
    x, h = rnd(1, 1, H), rnd(1, 1, H)
    mx.eval(kv, x, h)

    def eager(pos):
        logits, nh = drafter(x, h, kv, pos)
        return mx.argmax(logits[:, -1], axis=-1), nh

    # A shapeless compile of the whole step fails (Slice has no shapeless output shapes: the centroid
    # head's top-k slice), and a shaped one would recompile every round (the full K/V grows). So the
    # candidate compiles the parts whose shapes never change: the head (centroid scoring, gather,
    # scatter) and the post-projection.
    a = eager(p)
    mx.eval(a)
    host_eager = timed(lambda: eager(p), args.repeats)
    run_eager = timed(lambda: mx.eval(eager(p)), args.repeats)
    drafter.head = mx.compile(Drafter.head.__get__(drafter))
    b = eager(p)
    mx.eval(b)
    same = bool(mx.array_equal(a[0], b[0]).item()) and bool(mx.allclose(a[1], b[1], atol=1e-2).item())
    host_comp = timed(lambda: eager(p), args.repeats)
    run_comp = timed(lambda: mx.eval(eager(p)), args.repeats)
    print(f"{args.family} drafter ({sum(v.nbytes for _, v in _flat(drafter)) / 2**20:.0f} MiB), context {p}:")
    print(f"  drafter step, graph building: eager {1e6 * host_eager:.0f} us, compiled head {1e6 * host_comp:.0f} us")
    print(
        f"  drafter step, evaluated:      eager {1e3 * run_eager:.2f} ms, compiled head {1e3 * run_comp:.2f} ms "
        f"(same result: {same})"
    )

    V, k = dargs.text["vocab_size"], args.k
    logits = (mx.random.normal((k + 1, V)) * 3).astype(mx.bfloat16)
    drafts = mx.argmax(logits[:k], axis=-1)
    mx.eval(logits, drafts)
    acc_c = mx.compile(accept_greedy)
    print(
        f"  accept_greedy [{k + 1}, {V}], graph building: eager "
        f"{1e6 * timed(lambda: accept_greedy(logits, drafts), args.repeats):.0f} us, compiled "
        f"{1e6 * timed(lambda: acc_c(logits, drafts), args.repeats):.0f} us"
    )
    eager = timed(lambda: mx.eval(accept_greedy(logits, drafts)), args.repeats)
    compiled = timed(lambda: mx.eval(acc_c(logits, drafts)), args.repeats)
    print(f"  accept_greedy evaluated: eager {1e3 * eager:.3f} ms, compiled {1e3 * compiled:.3f} ms")
    print(
        f"  argmax [{k + 1}, {V}]: bf16 {1e3 * timed(lambda: mx.eval(mx.argmax(logits, -1)), args.repeats):.3f} ms, "
        f"float32 copy {1e3 * timed(lambda: mx.eval(mx.argmax(logits.astype(mx.float32), -1)), args.repeats):.3f} ms"
    )


def target_graph(args) -> None:
    from mlx import nn

    from mlx_specdec.bench import synthetic
    from mlx_specdec.cache import make_target_cache
    from mlx_specdec.models import quantise
    from mlx_specdec.models.target import Target, make_model, text_config

    cfg = text_config(synthetic.family_config(args.family)["target"])
    model = make_model(cfg)  # its random init stays lazy: building graphs needs no weights
    plan = quantise.plan(model, quantise.TARGET_RULES, 4, 64)
    nn.quantize(model, class_predicate=lambda path, m: plan.get(path, False))
    target, cache = Target(model, cfg), make_target_cache(cfg)

    def build(n: int) -> None:
        target(mx.zeros((1, n), dtype=mx.int32), cache)
        for c in cache:
            c.trim(n)

    build(1)
    print(
        f"  target forward, graph building: 1 token {1e3 * timed(lambda: build(1), args.repeats):.2f} ms, "
        f"{args.k + 1} tokens {1e3 * timed(lambda: build(args.k + 1), args.repeats):.2f} ms",
        flush=True,
    )


def prefill_chunks(args) -> None:
    from mlx_specdec import decode
    from mlx_specdec.bench import synthetic
    from mlx_specdec.cache import PromptCache

    bundle = synthetic.synthetic_bundle(args.family)
    ids = synthetic.random_prompt(bundle.target.vocab_size, args.prefill)
    default = decode.PREFILL_CHUNK
    try:
        for chunk in [int(c) for c in args.chunks.split(",")]:
            decode.PREFILL_CHUNK = chunk

            def run():
                logits, h = decode._prefill(bundle, PromptCache(bundle), ids)
                mx.eval(logits, h)

            mx.reset_peak_memory()
            seconds = timed(run, 2)
            print(
                f"  prefill {args.prefill} tokens, chunk {chunk}: {seconds:.3f} s, "
                f"peak {mx.get_peak_memory() / 2**30:.2f} GiB",
                flush=True,
            )
    finally:
        decode.PREFILL_CHUNK = default


def _flat(module):
    from mlx.utils import tree_flatten

    return tree_flatten(module.parameters())


if __name__ == "__main__":
    main()
