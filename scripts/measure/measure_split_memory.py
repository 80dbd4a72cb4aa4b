"""Peak memory per process of a target split over 2 processes (`mlx.launch -n 2`, ring backend on
localhost), tensor and pipeline parallel, against one process holding it whole: the README's figure.

    python scripts/measure/measure_split_memory.py     # builds a ~1 GiB bf16 target in a temp folder

The target is the 31B fixture's config (k_eq_v full layers, sliding layers) widened to hidden 2048,
MLP 8192 and 12 layers, with random bf16 weights. Each process loads it (split, or whole) and
decodes 16 tokens plainly after a 64-token prompt; it reports MLX's peak memory and its peak RSS.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
FIXTURE = ROOT / "tests" / "fixtures" / "families" / "31b" / "target"


def make_target(folder: Path) -> int:
    """A bf16 target in `folder` (the fixture's tokenizer); returns its weight bytes."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from mlx_specdec.models.target import make_model, text_config

    raw = json.loads((FIXTURE / "config.json").read_text())
    text = raw["text_config"]
    text.update(hidden_size=2048, intermediate_size=8192, num_hidden_layers=12, num_attention_heads=8)
    text.update(head_dim=128, global_head_dim=256, num_key_value_heads=4, num_global_key_value_heads=2)
    text["layer_types"] = (["sliding_attention"] * 5 + ["full_attention"]) * 2
    raw["dtype"] = "bfloat16"
    folder.mkdir(parents=True, exist_ok=True)
    for f in FIXTURE.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, folder / f.name)
    (folder / "config.json").write_text(json.dumps(raw))
    model = make_model(text_config(raw))
    weights = {
        f"model.language_model.{k.removeprefix('model.')}": (v * 0.02).astype(mx.bfloat16)
        for k, v in tree_flatten(model.parameters())
    }
    mx.save_safetensors(str(folder / "model.safetensors"), weights)
    return sum(v.nbytes for v in weights.values())


def worker(mode: str, folder: str) -> None:
    """One process: load (split as `mode` says under mlx.launch), decode, print its peaks as JSON."""
    import mlx.core as mx

    from mlx_specdec.distributed import start
    from mlx_specdec.load import load
    from mlx_specdec.settings import GenerationSettings

    run = start(mode)
    bundle = load(target=folder, split=run.split)
    bundle.tokenizer.eos_token_ids = []
    records = run.stream_generate(bundle, list(range(3, 67)), GenerationSettings(max_tokens=16, draft=0))
    tokens = [r.token for r in records]
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    row = {"mode": mode if run.size > 1 else "one process", "rank": run.rank, "tokens": tokens}
    row |= {"peak_mib": mx.get_peak_memory() / 2**20, "rss_mib": rss / 2**20}
    print(json.dumps(row), file=sys.stderr, flush=True)  # stderr: every rank's, not rank 0's only


def main() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    launcher = shutil.which("mlx.launch") or str(Path(sys.executable).with_name("mlx.launch"))
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "target"
        size = make_target(folder)
        print(f"target: {size / 2**30:.2f} GiB bf16")
        runs = [[sys.executable, __file__, "--worker", "tensor", str(folder)]]
        for mode in ("tensor", "pipeline"):
            runs.append([launcher, "-n", "2", "--backend", "ring", "--", *runs[0][:3], mode, str(folder)])
        for cmd in runs:
            done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
            rows = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
            if not rows:
                raise SystemExit(done.stderr[-2000:])
            for r in sorted(rows, key=lambda r: r["rank"]):
                print(
                    f"{r['mode']:12} rank {r['rank']}: MLX peak {r['peak_mib']:6.0f} MiB, RSS {r['rss_mib']:6.0f} MiB, "
                    f"tokens {r['tokens'][:6]}"
                )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--worker"]:
        worker(sys.argv[2], sys.argv[3])
    else:
        main()
