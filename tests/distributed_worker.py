"""Run under `mlx.launch -n 2` by tests/test_distributed.py (not a test module itself).

One launch covers both splits (the launch costs more than the requests). For each family
fixture, both modes, and four requests (greedy k = 0, 3 and auto; seeded sampling at k = 3): the
split's tokens next to one process's tokens for the same request, and the bytes of target weights
this rank holds next to the whole model's. Families: E2B (KV-shared layers, double-wide MLPs, a
centroid head), 12B, 26B-A4B (experts), 31B (k_eq_v full layers), and the 26B-A4B converted to
4 bits (OUT/moe-4bit, made by the test: its dense MLP is 3 quantisation groups wide, so tensor
parallel cuts it 2 + 1). The split runs go through `oneshot.generate_records`, the call behind
`specdec generate` (loading, the memory check, the numerics notes, the SPMD loop); a prompt's
run stops at an end-of-turn token as the command's does. Each rank writes OUT/rank<r>.json.

Auto's costs: calibration over TCP collectives takes 3-17 s a bundle here, so each process
measures once, with one repeat, on the first bundle it calibrates (the E2B; the split's under
tensor parallel), and reuses those costs for the others; rank r scales drafting rounds by 1 + 2r.
Left alone, the two ranks would then choose different draft lengths (k = 1 and k = 0) and stop
at the per-round agreement check: the tokens can only match if the loop agrees one policy for
every rank (`Spmd.policy`).
"""

import json
import sys
from pathlib import Path

import mlx.core as mx
from mlx.utils import tree_flatten

from mlx_specdec import calibrate, distributed
from mlx_specdec.decode import generate
from mlx_specdec.distributed import Spmd, start
from mlx_specdec.load import load
from mlx_specdec.oneshot import generate_records
from mlx_specdec.prompt import PromptInput
from mlx_specdec.sampling import SamplingParams
from mlx_specdec.settings import GenerationSettings

FIXTURES = Path(__file__).parent / "fixtures"
FAMILIES = ("e2b", "12b", "26b-a4b", "31b")
MODES = ("tensor", "pipeline")
TOKENS = 6
REQUESTS = {
    "greedy k=3": GenerationSettings(max_tokens=TOKENS, draft=3),
    "sampled k=3": GenerationSettings(max_tokens=TOKENS, draft=3, sampling=SamplingParams(temp=1.0, seed=7)),
    "greedy k=0": GenerationSettings(max_tokens=TOKENS, draft=0),  # plain rounds issued early
    "greedy auto": GenerationSettings(max_tokens=TOKENS, draft="auto"),
}
PROMPT = [3, 5, 7, 9, 11, 2]
_measure = calibrate.calibrate


def rank_skewed_costs(rank: int):
    measured = []

    def costs(bundle, max_k, *args, **kwargs):
        if not measured:
            measured.extend(_measure(bundle, max_k, repeats=1))
        return [c * (1 + 2 * rank) if k else c for k, c in enumerate(measured)]

    return costs


def weight_bytes(bundle) -> int:
    return sum(v.nbytes for _, v in tree_flatten(bundle.target.model.parameters()))


def pairs(out: Path):
    for fam in FAMILIES:
        yield (
            fam,
            {"target": FIXTURES / "families" / fam / "target", "drafter": FIXTURES / "families" / fam / "assistant"},
        )
    yield "26b-a4b 4-bit", {"model": out / "moe-4bit"}


def main(out: Path) -> None:
    first = start("tensor")
    calibrate.calibrate = rank_skewed_costs(0)  # one process (the reference)
    distributed.calibrate = rank_skewed_costs(first.rank)
    report = {"rank": first.rank, "size": first.size, "modes": {}}
    for fam, where in pairs(out):
        whole = load(**where)
        alone = {name: generate(whole, PROMPT, settings).tokens for name, settings in REQUESTS.items()}
        for mode in MODES:
            got = {}
            for name, settings in REQUESTS.items():  # as `specdec generate --parallel MODE` runs them
                records = generate_records(PromptInput(ids=PROMPT), settings, **where, parallel=mode)
                got[name] = {"one": alone[name], "several": [r.token for r in records]}
            print(f"rank {first.rank}: {mode} {fam} done", file=sys.stderr, flush=True)
            split = load(**where, split=Spmd(first.group, mode).split)
            got["bytes"] = {"split": weight_bytes(split), "whole": weight_bytes(whole)}
            report["modes"].setdefault(mode, {})[fam] = got
            del split
            mx.clear_cache()
            (out / f"rank{first.rank}.json").write_text(json.dumps(report))  # after each family


if __name__ == "__main__":
    main(Path(sys.argv[1]))
