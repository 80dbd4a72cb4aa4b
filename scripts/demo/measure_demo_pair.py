"""Measure a converted demo bundle in MLX on held-out prompts: acceptance per round and per
draft position, greedy at k = 1..4 (checking speculative == plain) and sampled at temperature 0.7.

The prompts come from entries the demo pair never trained on (`demo_corpus.split_corpus`, a split
by name): chat questions about held-out names, and the first 40 tokens of held-out documents.

Usage:
    python scripts/demo/measure_demo_pair.py BUNDLE [BUNDLE ...] [--prompts 12] [--max-tokens 64] [--json FILE]
Needs only MLX (no torch). The figures in mlx_specdec/demo/README.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from demo_corpus import CHAT_QUESTIONS, split_corpus, stdlib_entries  # noqa: E402

from mlx_specdec.decode import stream_generate  # noqa: E402
from mlx_specdec.load import load  # noqa: E402
from mlx_specdec.prompt import chat_ids  # noqa: E402
from mlx_specdec.settings import GenerationSettings, SamplingParams  # noqa: E402
from mlx_specdec.stats import position_counts, rounds_from_records  # noqa: E402


def held_out_prompts(tokenizer, n: int) -> list[list[int]]:
    _, held = split_corpus(stdlib_entries())
    half = n // 2
    prompts = []
    for i, (name, _) in enumerate(held[:half]):
        chat = [{"role": "user", "content": CHAT_QUESTIONS[i % len(CHAT_QUESTIONS)].format(name)}]
        prompts.append(chat_ids(tokenizer, chat))
    for name, doc in held[half : 2 * half]:
        prompts.append([2] + tokenizer.encode(f"{name}\n\n{doc}", add_special_tokens=False)[:39])
    return prompts


def run(bundle, ids, settings) -> list:
    """One generation's records."""
    return list(stream_generate(bundle, ids, settings))


def acceptance(runs: list[list], k: int) -> dict:
    """Mean accepted per round, per-position conditional acceptance and the histogram."""
    rounds = [r for records in runs for r in rounds_from_records(records) if r.k]
    tried, hit = position_counts(rounds)
    hist = [0] * (k + 1)
    for r in rounds:
        hist[r.accepted] += 1
    return {
        "rounds": len(rounds),
        "mean_accepted_per_round": sum(r.accepted for r in rounds) / max(1, len(rounds)),
        "per_position": [round(h / t, 3) if t else None for h, t in zip(hit[:k], tried[:k])],
        "histogram": hist,
    }


def measure(bundle_path: str, n_prompts: int, max_tokens: int) -> dict:
    bundle = load(bundle_path)
    prompts = held_out_prompts(bundle.tokenizer, n_prompts)
    out = {"bundle": bundle_path, "prompts": len(prompts), "max_tokens": max_tokens, "greedy": {}}
    plain = [[r.token for r in run(bundle, p, GenerationSettings(max_tokens=max_tokens, draft=0))] for p in prompts]
    for k in (1, 2, 3, 4):
        runs = [run(bundle, p, GenerationSettings(max_tokens=max_tokens, draft=k)) for p in prompts]
        exact = all([r.token for r in records] == want for records, want in zip(runs, plain))
        out["greedy"][f"k={k}"] = {**acceptance(runs, k), "equals_plain": exact}
    runs = [
        run(
            bundle,
            p,
            GenerationSettings(max_tokens=max_tokens, draft=4, sampling=SamplingParams(temp=0.7, seed=1000 + i)),
        )
        for i, p in enumerate(prompts)
    ]
    out["temp_0.7"] = {"k=4": acceptance(runs, 4)}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bundles", nargs="+")
    ap.add_argument("--prompts", type=int, default=12)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--json")
    args = ap.parse_args()
    results = [measure(b, args.prompts, args.max_tokens) for b in args.bundles]
    for r in results:
        print(r["bundle"])
        for mode, rows in (("greedy", r["greedy"]), ("T=0.7", r["temp_0.7"])):
            for k, a in rows.items():
                extra = f"  equals plain: {a['equals_plain']}" if "equals_plain" in a else ""
                print(
                    f"  {mode:6} {k}: {a['mean_accepted_per_round']:.2f} accepted/round over {a['rounds']} rounds, "
                    f"per position {a['per_position']}, histogram {a['histogram']}{extra}"
                )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
