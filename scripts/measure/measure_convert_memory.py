"""Time and peak memory of `specdec convert` against mlx-lm's own convert, on a synthetic checkpoint.

The checkpoint is E2B-shaped where memory matters: vocabulary 262144, a per-layer embedding
(PLE) that is one bf16 tensor of `--ple-gib` GiB (E2B's is 4.4 GiB), random weights. Both
converters run in a fresh subprocess at 4 bits, group size 64; peak memory is the child's peak
RSS (`ru_maxrss`). Ours converts the target and a tiny drafter; mlx-lm converts the target only.

Usage: python scripts/measure/measure_convert_memory.py [--ple-gib 1.0] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_specdec.models.drafter import Drafter, DrafterArgs
from mlx_specdec.models.target import make_model, text_config

VOCAB = 262144
S, F = "sliding_attention", "full_attention"


def target_config(ple_gib: float) -> dict:
    layers = 8
    ple = int(ple_gib * 2**30 / (VOCAB * 2 * layers))
    return {
        "model_type": "gemma4_text",
        "vocab_size": VOCAB,
        "hidden_size": 256,
        "num_hidden_layers": layers,
        "intermediate_size": 512,
        "num_attention_heads": 4,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "global_head_dim": 128,
        "sliding_window": 512,
        "layer_types": [S, S, S, F] * 2,
        "num_kv_shared_layers": 4,
        "hidden_size_per_layer_input": ple,
        "vocab_size_per_layer_input": VOCAB,
        "use_double_wide_mlp": True,
        "final_logit_softcapping": 30.0,
        "tie_word_embeddings": True,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 4096,
        "eos_token_id": [1],
        "bos_token_id": 2,
        "pad_token_id": 0,
    }


def drafter_config(target: dict) -> dict:
    text = {
        "model_type": "gemma4_text",
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "num_hidden_layers": 4,
        "intermediate_size": 128,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "head_dim": 64,
        "global_head_dim": 128,
        "sliding_window": 512,
        "layer_types": [S, S, S, F],
        "num_kv_shared_layers": 4,
        "hidden_size_per_layer_input": 0,
        "tie_word_embeddings": True,
    }
    return {"model_type": "gemma4_assistant", "backbone_hidden_size": target["hidden_size"], "text_config": text}


def write_checkpoint(folder: Path, config: dict, model) -> None:
    folder.mkdir(parents=True)
    weights = {}
    for i, (name, w) in enumerate(tree_flatten(model.parameters())):
        w = mx.random.normal(w.shape, key=mx.random.key(i)) * 0.02 if w.ndim == 2 else w
        weights[name] = w.astype(mx.bfloat16)
        mx.eval(weights[name])
    mx.save_safetensors(str(folder / "model.safetensors"), weights, metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(config))


# Runs one command and prints its wall time and peak RSS: RUSAGE_CHILDREN is a maximum over all
# children so far, so each measurement gets a wrapper process of its own.
WRAPPER = """
import json, resource, subprocess, sys, time
start = time.perf_counter()
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / (1024 if sys.platform == "darwin" else 1)
print(json.dumps({"seconds": round(time.perf_counter() - start, 1), "peak_rss_gib": round(kib / 2**20, 2)}))
"""


def run(cmd: list[str]) -> dict:
    out = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ple-gib", type=float, default=1.0)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="convert-memory-"))
    tcfg = target_config(args.ple_gib)
    if not (work / "target").is_dir():  # a --work folder from an earlier run is reused
        write_checkpoint(work / "target", tcfg, make_model(text_config(tcfg)))
        dcfg = drafter_config(tcfg)
        write_checkpoint(work / "drafter", dcfg, Drafter(DrafterArgs.from_config(dcfg)))
        shutil.copy(Path(__file__).parents[2] / "tests/fixtures/families/e2b/target/tokenizer.json", work / "target")
    for out in ("mlx-lm", "ours"):
        shutil.rmtree(work / out, ignore_errors=True)
    largest = VOCAB * tcfg["num_hidden_layers"] * tcfg["hidden_size_per_layer_input"] * 2
    mlx_lm = run(
        [
            sys.executable,
            "-m",
            "mlx_lm",
            "convert",
            "--hf-path",
            str(work / "target"),
            "--mlx-path",
            str(work / "mlx-lm"),
            "-q",
            "--q-bits",
            "4",
            "--q-group-size",
            "64",
        ]
    )
    ours = run(
        [
            sys.executable,
            "-c",
            "import sys, weights_convert; weights_convert.convert(*sys.argv[1:4], bits=4)",
            str(work / "target"),
            str(work / "drafter"),
            str(work / "ours"),
        ]
    )
    print(
        json.dumps(
            {"largest_tensor_gib": round(largest / 2**30, 2), "mlx_lm_convert": mlx_lm, "specdec_convert": ours},
            indent=1,
        )
    )
    if args.work is None:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
