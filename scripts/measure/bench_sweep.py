"""Check the speed targets on one pair: `specdec bench` twice, the second time with the
drafter's weights shuffled (a useless drafter), then one verdict line per target.

    python scripts/measure/bench_sweep.py --demo [--max-tokens 128 --trials 3 --k 1,2,3,4,6,8 --json out.json]
    python scripts/measure/bench_sweep.py --target T --drafter D

Targets (ratios from one run, not timed tests):
  plain >= 0.95x mlx-lm; auto loop efficiency >= 0.9; useless drafter: auto >= 0.95x plain;
  and, reported without a threshold, auto's speed-up over plain and the best fixed k.
"""

from __future__ import annotations

import argparse
import sys

from mlx_specdec.blas import describe_blas, use_optimised_blas
from mlx_specdec.errors import SpecdecError


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("model", nargs="?")
    ap.add_argument("--demo", action="store_true")
    ap.add_argument("--target")
    ap.add_argument("--drafter")
    ap.add_argument("--prompts", help="JSONL prompts file (default: the built-in suite)")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--k", default="1,2,3,4,6,8")
    ap.add_argument("--ignore-eos", action="store_true")
    ap.add_argument("--json", help="write both results here")
    ap.add_argument("--plot", help="plot of tokens/s (and tokens/J) against k for the first run (needs matplotlib)")
    args = ap.parse_args()
    use_optimised_blas(any_program=True)

    from rich.console import Console

    from mlx_specdec.bench.protocol import SUITE, load_prompts, parse_k_list, run_bench
    from mlx_specdec.bench.report import check_output, check_plot, render_table, summary_line, write_json, write_plot
    from mlx_specdec.load import load

    out, err = Console(width=None if sys.stdout.isatty() else 120), Console(stderr=True)
    # Bad input and unwritable outputs fail now, in one line, not after both runs.
    prompts = load_prompts(args.prompts) if args.prompts else SUITE
    ks = parse_k_list(args.k)
    if args.json:
        check_output(args.json, "--json")
    if args.plot:
        check_plot(args.plot)
    common = {
        "prompts": prompts,
        "max_tokens": args.max_tokens,
        "trials": args.trials,
        "ignore_eos": args.ignore_eos,
        "blas": describe_blas(),
        "log": lambda line: err.print(f"[dim]{line}[/dim]"),
    }

    def bundle():
        return load(args.model, target=args.target, drafter=args.drafter, demo=args.demo)

    main_run = run_bench(bundle(), ks=ks, **common)
    useless = run_bench(bundle(), ks=[1], mlx_lm=False, useless_drafter=True, **common)
    for result in (main_run, useless):
        out.print(render_table(result))
        out.print(summary_line(result))

    s, u = main_run.summary, useless.summary
    checks = [
        ("plain >= 0.95x mlx-lm", s.plain_vs_mlx_lm, 0.95),
        ("auto loop efficiency >= 0.9", s.loop_efficiency, 0.9),
        ("useless drafter: auto >= 0.95x plain", u.auto_speedup, 0.95),
    ]
    ok = True
    for name, value, need in checks:
        passed = value is not None and value >= need
        ok &= passed
        out.print(f"{'PASS' if passed else 'FAIL'}  {name}: {'n/a' if value is None else f'{value:.2f}'}")
    if s.auto_speedup is not None and s.best_fixed_k is not None:
        out.print(
            f"info  auto speed-up over plain: {s.auto_speedup:.2f}x; best fixed k={s.best_fixed_k} "
            f"({s.best_fixed_k_speedup:.2f}x)"
        )
    if args.plot:
        write_plot(main_run, args.plot)
    if args.json:
        write_json({"bench": main_run, "useless_drafter": useless}, args.json)
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except SpecdecError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
