"""The bundled demo pair loads offline, decodes exactly, and its drafter is actually good."""

import pytest

from mlx_specdec.decode import generate
from mlx_specdec.load import DEMO_DIR, load
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings as S

# A question about an entry held out of the demo pair's training corpus.
HELD_OUT = "Explain `argparse.ArgumentTypeError`."  # a held-out name (scripts/demo/demo_corpus.py)


@pytest.fixture(scope="module")
def demo():
    with pytest.MonkeyPatch.context() as mp:  # offline: nothing may reach a hub
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        return load(demo=True)


def user_ids(bundle, text):
    return chat_ids(bundle.tokenizer, [{"role": "user", "content": text}])


def test_demo_bundle_is_packaged_with_its_model_card():
    assert (DEMO_DIR / "manifest.json").is_file()
    assert (DEMO_DIR / "README.md").is_file()
    size = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert size < 8 * 2**20


@pytest.mark.parametrize("k", [4, *(pytest.param(k, marks=pytest.mark.slow) for k in (2, "auto"))])
def test_demo_greedy_is_identical_with_and_without_drafter(demo, k):
    ids = user_ids(demo, "What does the len function do?")
    _, plain, _ = generate(demo, ids, S(max_tokens=60, draft=0))
    _, spec, _ = generate(demo, ids, S(max_tokens=60, draft=k))
    assert spec == plain, f"k={k}"


def test_demo_drafter_accepts_more_than_one_and_a_half_per_round(demo):
    ids = user_ids(demo, HELD_OUT)
    _, _, stats = generate(demo, ids, S(max_tokens=120, draft=4))
    assert stats.mean_accepted_per_round > 1.5, stats


@pytest.mark.slow
def test_demo_speculation_is_exact_far_past_its_sliding_window(demo):
    """The demo's window is 128: a 150-token prompt plus 200 generated tokens cross it twice."""
    window = demo.target.sliding_window
    ids = user_ids(demo, "Tell me about the with statement. " * 20)
    assert len(ids) > window
    _, plain, _ = generate(demo, ids, S(max_tokens=200, draft=0), stop_tokens=())  # the full length
    _, spec, stats = generate(demo, ids, S(max_tokens=200, draft=4), stop_tokens=())
    assert len(ids) + len(plain) > 2 * window
    assert spec == plain and stats.accepted > 0
