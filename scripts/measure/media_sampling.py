"""The statistics behind tests/test_media_sampling.py: the chi-square of the pooled randomised PITs
of tokens 2-5 after an image and an audio clip, for the right rule and the two wrong ones the test
says must fail, with the acceptance rate. Usage (from the repository root, about 30 s):

    python scripts/measure/media_sampling.py [--runs 200]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlx_specdec import round as round_module  # noqa: E402
from mlx_specdec import sampling  # noqa: E402
from tests import test_media_sampling as t  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    args = parser.parse_args()
    bundle = t.bundle.__wrapped__()
    prompt = t.prompt.__wrapped__(bundle)
    right_rule, right_draft = sampling.accept_rejection, round_module.draft
    arms = {
        "right": (right_rule, right_draft),
        "accept_every_draft": (t.accept_every_draft, right_draft),
        "sharper_q": (right_rule, t.drafter_reports_a_sharper_q(right_draft)),
    }
    for name, (rule, draft) in arms.items():
        sampling.accept_rejection, round_module.draft = rule, draft
        try:
            us, accepted, drafted = t.uniforms(bundle, prompt, args.runs)
        finally:
            sampling.accept_rejection, round_module.draft = right_rule, right_draft
        row = {"rule": name, "runs": args.runs, "chi2": round(t.chi2_uniform(us), 1)}
        row |= {"critical": round(t.chi2_critical(t.BINS - 1), 1), "accepted": f"{accepted}/{drafted}"}
        print(json.dumps(row))


if __name__ == "__main__":
    main()
