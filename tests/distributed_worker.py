"""Run under `mlx.launch -n 2` by tests/test_distributed.py (not a test module itself).

One launch covers both splits (the launch costs more than the requests). For each family
fixture and each mode that runs it: the split's tokens (greedy k = 3 and seeded sampling for
every one; greedy k = 0 and auto, which calibrates, on E2B only: collectives over TCP on a busy
machine are slow) next to one process's tokens for the same request, and the bytes of target
weights this rank holds next to the whole model's. Tensor parallel runs E2B and the 26B-A4B (MoE
experts; the 12B and 31B split as the E2B does: dense MLP, full heads); pipeline parallel every
family (KV-shared layers, double-wide MLPs, experts, k_eq_v full layers). Each rank writes
OUT/rank<r>.json.
"""

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_specdec.decode import generate
from mlx_specdec.distributed import Spmd, start
from mlx_specdec.load import load
from mlx_specdec.sampling import SamplingParams
from mlx_specdec.settings import GenerationSettings

FIXTURES = Path(__file__).parent / "fixtures"
MODES = {"e2b": ("tensor", "pipeline"), "12b": ("pipeline",), "26b-a4b": ("tensor", "pipeline"), "31b": ("pipeline",)}
TOKENS = 6
REQUESTS = {
    "greedy k=3": GenerationSettings(max_tokens=TOKENS, draft=3),
    "sampled k=3": GenerationSettings(max_tokens=TOKENS, draft=3, sampling=SamplingParams(temp=1.0, seed=7)),
    "greedy k=0": GenerationSettings(max_tokens=TOKENS, draft=0),  # plain rounds issued early
    "greedy auto": GenerationSettings(max_tokens=TOKENS, draft="auto"),
}
EVERY_REQUEST = ("e2b",)
PROMPT = [3, 5, 7, 9, 11, 2]


def weight_bytes(bundle) -> int:
    return sum(v.nbytes for _, v in tree_flatten(bundle.target.model.parameters()))


def main(out: Path) -> None:
    first = start("tensor")
    report = {"rank": first.rank, "size": first.size, "modes": {}}
    for fam, modes in MODES.items():
        target, drafter = FIXTURES / "families" / fam / "target", FIXTURES / "families" / fam / "assistant"
        whole = load(target=target, drafter=drafter)
        whole.tokenizer.eos_token_ids = []  # full-length runs
        requests = list(REQUESTS.items())[: None if fam in EVERY_REQUEST else 2]
        alone = {name: generate(whole, PROMPT, settings).tokens for name, settings in requests}
        for mode in modes:
            run = Spmd(first.group, mode)
            split = load(target=target, drafter=drafter, split=run.split)
            split.tokenizer.eos_token_ids = []
            got = {}
            for name, settings in requests:
                several = [r.token for r in run.stream_generate(split, PROMPT, settings)]
                got[name] = {"one": alone[name], "several": several}
                print(f"rank {run.rank}: {mode} {fam} {name} done", file=sys.stderr, flush=True)
            got["bytes"] = {"split": weight_bytes(split), "whole": weight_bytes(whole)}
            report["modes"].setdefault(mode, {})[fam] = got
            del split
            mx.clear_cache()
            (out / f"rank{run.rank}.json").write_text(json.dumps(report))  # after each family


if __name__ == "__main__":
    main(Path(sys.argv[1]))
