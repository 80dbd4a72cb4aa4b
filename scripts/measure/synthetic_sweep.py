"""Synthetic sweep: one family built once, benchmarked at several oracle acceptance rates.

    python scripts/measure/synthetic_sweep.py --family e2b --acceptance 0 0.5 0.8 0.92,0.79,0.68,0.59 --out DIR
    python scripts/measure/synthetic_sweep.py --summarise DIR      # DIR/summary.md and one plot per family

Writes DIR/<family>-a<rate>.json per run (`specdec bench --synthetic`'s JSON), or
DIR/<family>-error.json with the one-line reason when the family cannot be built or run.
`scripts/setup/device_bench.sh` runs this for every family on a GPU machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def sweep(args) -> int:
    from mlx_specdec.bench import synthetic
    from mlx_specdec.bench.protocol import parse_k_list
    from mlx_specdec.bench.report import write_json
    from mlx_specdec.bench.synthetic_run import run_synthetic
    from mlx_specdec.errors import SpecdecError

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + args.budget_s
    try:
        import mlx.core as mx

        built = synthetic.build(args.family, args.bits, dtype=getattr(mx, args.dtype))
    except (SpecdecError, ValueError, RuntimeError) as e:
        label = Path(args.family).stem
        (out / f"{label}-error.json").write_text(json.dumps({"family": label, "error": str(e)}) + "\n")
        print(f"{label}: cannot build: {e}", file=sys.stderr)
        return 1
    report = built[1]
    label = report.name
    print(f"{label}: built in {report.seconds:.1f} s, target {report.target_bytes / 2**30:.2f} GiB", flush=True)
    for text in args.acceptance:
        if time.monotonic() > deadline:
            print(f"{label}: budget spent, skipping acceptance {text}", file=sys.stderr)
            continue
        rates = synthetic.parse_acceptance(text)
        name = f"{label}-a{text.replace(',', '_')}.json"
        try:
            result = run_synthetic(
                args.family,
                built=built,
                acceptance=rates,
                ks=parse_k_list(args.k),
                auto=not args.no_auto,
                max_tokens=args.max_tokens,
                prompt_tokens=args.prompt_tokens,
                trials=args.trials,
            )
        except (SpecdecError, ValueError, RuntimeError) as e:
            (out / f"{label}-error.json").write_text(
                json.dumps({"family": label, "acceptance": text, "error": str(e)}) + "\n"
            )
            print(f"{label} at {text}: {e}", file=sys.stderr)
            return 1
        write_json(result, out / name)
        s = result.summary
        print(
            f"{label} a={text}: auto {_x(s.auto_speedup)}, best k={s.best_fixed_k} {_x(s.best_fixed_k_speedup)}",
            flush=True,
        )
    return 0


def summarise(folder: Path) -> None:
    """summary.md (one row per run) and <family>.png (speed-up against acceptance) from the JSONs."""
    from mlx_specdec.bench.synthetic_report import write_plot

    results = [json.loads(p.read_text()) for p in sorted(folder.glob("*-a*.json"))]
    lines = [
        (
            "| family | acceptance | plain tok/s | auto | best fixed k | verify(k+1)/plain at best k | draft/plain "
            "| host wait (auto) | peak GiB | exact |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_family: dict[str, list] = {}
    for r in results:
        fam, modes = r["synthetic"]["family"], {e["mode"]: e for e in r["modes"]}
        by_family.setdefault(fam, []).append(r)
        s, plain = r["summary"], modes["plain"]
        best = modes.get(f"k={s['best_fixed_k']}") if s["best_fixed_k"] else None
        auto = modes.get("auto")
        peak = max(e["peak_memory_bytes"] for e in r["modes"]) / 2**30
        lines.append(
            " | ".join(
                [
                    f"| {fam}",
                    ",".join(str(a) for a in r["synthetic"]["acceptance"] or []) or "own",
                    f"{plain['decode_tokens_per_s']:.1f}",
                    _x(s["auto_speedup"]),
                    f"k={s['best_fixed_k']} {_x(s['best_fixed_k_speedup'])}" if best else "-",
                    f"{best['verify_cost_vs_plain']:.2f}" if best else "-",
                    f"{best['draft_step_cost_vs_plain']:.3f}" if best else "-",
                    f"{100 * auto['host_wait_fraction']:.1f}%"
                    if auto and auto["host_wait_fraction"] is not None
                    else "-",
                    f"{peak:.1f}",
                    "yes" if all(e["matches_plain"] for e in r["modes"]) else "NO",
                ]
            )
            + " |"
        )
    for p in sorted(folder.glob("*-error.json")):
        e = json.loads(p.read_text())
        lines.append(f"| {e['family']} | {e.get('acceptance', '-')} | error: {e['error']} | | | | | | | |")
    (folder / "summary.md").write_text("\n".join(lines) + "\n")
    for fam, rs in by_family.items():
        write_plot(rs, folder / f"{fam}.png")
    print("\n".join(lines))


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", help="e2b, e4b, 12b, 26b-a4b, 31b or a config.json")
    ap.add_argument("--acceptance", nargs="+", default=["0.92,0.79,0.68,0.59", "0", "0.8", "0.5"])
    ap.add_argument("--out", help="folder for the JSON files")
    ap.add_argument("--bits", type=int, default=4)
    ap.add_argument("--k", default="1,2,3,4,6,8")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-tokens", type=int, default=64)
    ap.add_argument("--trials", type=int, default=1)
    ap.add_argument("--no-auto", action="store_true")
    ap.add_argument(
        "--dtype",
        default="bfloat16",
        choices=("bfloat16", "float16", "float32"),
        help="activations and unquantised weights (float32 on a CPU: its bf16 path is slow)",
    )
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no new acceptance run after this")
    ap.add_argument("--summarise", metavar="DIR", help="only write DIR/summary.md and the plots")
    args = ap.parse_args()
    if args.summarise:
        summarise(Path(args.summarise))
        return 0
    if not args.family or not args.out:
        ap.error("--family and --out are required (or --summarise DIR)")
    return sweep(args)


if __name__ == "__main__":
    sys.exit(main())
