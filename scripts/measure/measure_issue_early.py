"""A/B of issuing early (models/target.py): the same bundle decoded with every N-th layer of a
short pass handed to the device as soon as it is built, and with no early hand-off (N = 0).

    python scripts/measure/measure_issue_early.py [--model e2b | --model config.json | --demo] \
        [--every 0,4,2] [--k 0,3] [--max-tokens 64] [--trials 4]

Variants run interleaved, trial by trial, on one bundle (ratios from one run, never absolute
speeds). Prints, per k and variant, the median round time, the median host time per round
(`stats.Round.host_s`: from the previous sync to the round fully issued) and the speed against
N = 0; greedy output must be the same for every variant, or the script fails. `--model` takes a
synthetic family or config (random weights, `--dtype float32` on a CPU), `--demo` the demo pair.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import mlx.core as mx


def main() -> None:
    from mlx_specdec import decode
    from mlx_specdec.bench import synthetic
    from mlx_specdec.load import load
    from mlx_specdec.settings import GenerationSettings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="e2b", help="a synthetic family or config.json")
    ap.add_argument("--demo", action="store_true", help="the bundled demo pair instead")
    ap.add_argument("--every", default="0,4,2", help="layers between early hand-offs; 0 (none) first")
    ap.add_argument("--k", default="0,3")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--trials", type=int, default=4)
    ap.add_argument("--dtype", default="float32", choices=("bfloat16", "float16", "float32"))
    args = ap.parse_args()
    everies = [int(e) for e in args.every.split(",")]
    ks = [int(k) for k in args.k.split(",")]

    if args.demo:
        bundle = load(demo=True)
        ids = bundle.tokenizer.encode("Once upon a time, a small fox")
    else:
        bundle = synthetic.synthetic_bundle(args.model, bits=4, dtype=getattr(mx, args.dtype))
        ids = synthetic.random_prompt(bundle.target.vocab_size, args.prompt_tokens)

    def run(every: int, k: int) -> tuple[list[int], float, float]:
        settings = GenerationSettings(max_tokens=args.max_tokens, draft=k)
        with bundle.target.issuing(every):
            records = list(decode.stream_generate(bundle, ids, settings, stop_tokens=[]))
        rounds = [r.round_info for r in records if r.round_info is not None]
        return (
            [r.token for r in records],
            statistics.median(r.seconds for r in rounds),
            statistics.median(r.host_s for r in rounds),
        )

    for k in ks:
        run(everies[0], k)  # warm-up
        times: dict[int, list[tuple[float, float]]] = {e: [] for e in everies}
        outputs = {}
        for _ in range(args.trials):
            for e in everies:
                tokens, sec, host = run(e, k)
                outputs.setdefault(e, tokens)
                if tokens != outputs[everies[0]]:
                    sys.exit(f"issue_every={e}, k={k}: output differs from issue_every={everies[0]}")
                times[e].append((sec, host))
        base = statistics.median(t[0] for t in times[everies[0]])
        for e in everies:
            sec = statistics.median(t[0] for t in times[e])
            host = statistics.median(t[1] for t in times[e])
            print(
                f"k={k} every={e}: round {1e3 * sec:.2f} ms, host {1e3 * host:.2f} ms/round, "
                f"{base / sec:.3f}x of every={everies[0]}",
                flush=True,
            )


if __name__ == "__main__":
    main()
