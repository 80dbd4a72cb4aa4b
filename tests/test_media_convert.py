"""`specdec convert` keeps the vision tower: BUNDLE/vision, loaded on the first image only.

On every tiny image fixture (tests/fixtures/media [E2B-shaped], media_31b [dense, image tokens that
see their whole image], media_26b [the same with the 26B-A4B's experts]): a 16-bit bundle answers
an image exactly as the Hugging Face folders do (transformers' 40 greedy tokens), a 4-bit one (group
size 32) drafts exactly after an image, and a text-only turn never reads the tower. The E2B fixture
runs in the quick loop, the other two in the slow tier.
"""

import json

import mlx.core as mx
import numpy as np
import pytest

import weights_convert
from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.media import PROCESSOR_FILES, attach_images, image_placeholders
from mlx_specdec.prompt import chat_ids
from mlx_specdec.settings import GenerationSettings

from .helpers.paths import FIXTURES

MEDIA = FIXTURES / "media"
PROMPT = "Describe it."
FOLDERS = pytest.mark.parametrize(
    "folder",
    [
        MEDIA,
        pytest.param(FIXTURES / "media_31b", marks=pytest.mark.slow),
        pytest.param(FIXTURES / "media_26b", marks=pytest.mark.slow),
    ],
    ids=["e2b", "31b", "26b"],
    scope="module",
)


@pytest.fixture(scope="module")
def bundles(folder, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"mm-{folder.name}")
    for bits in (4, 16):
        weights_convert.convert(
            str(folder / "target"), str(folder / "assistant"), root / f"b{bits}", bits=bits, group_size=32
        )
    return root


def run(bundle, image, draft, n=12):
    ids = chat_ids(bundle.tokenizer, [{"role": "user", "content": image_placeholders(bundle, 1) + PROMPT}])
    ids, media = attach_images(bundle, ids, [image])
    return ids, generate(bundle, ids, GenerationSettings(max_tokens=n, draft=draft), media=media).tokens


@FOLDERS
def test_converted_16_bit_bundle_keeps_the_tower_and_answers_an_image_as_transformers(bundles, folder):
    ref = {k: np.array(v) for k, v in mx.load(str(folder / "reference.safetensors")).items()}
    b = load(bundles / "b16")
    b.tokenizer.eos_token_ids = []  # the reference runs 40 tokens whatever they are
    ids, tokens = run(b, folder / "image.png", draft=3, n=40)
    assert ids == ref["prompt_ids"].tolist() and tokens == ref["greedy_ids"].tolist()
    manifest = json.loads((bundles / "b16" / "manifest.json").read_text())
    assert manifest["sizes"]["vision"]["tensors"] > 0 and "vision/model.safetensors" in manifest["files"]
    assert any((bundles / "b16" / "vision" / name).is_file() for name in PROCESSOR_FILES)


@FOLDERS
def test_4_bit_bundle_drafts_exactly_after_an_image_and_text_never_loads_the_tower(bundles, folder):
    b = load(bundles / "b4")
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": PROMPT}])
    generate(b, ids, GenerationSettings(max_tokens=4, draft=3))
    assert b.vision is None
    _, plain = run(b, folder / "image.png", draft=0)
    _, spec = run(b, folder / "image.png", draft=3)
    assert spec == plain and b.vision is not None


@FOLDERS
def test_4_bit_bundle_hands_the_prompt_the_towers_floats_not_its_packed_embedding_dtype(bundles, folder):
    """The target's embedding table is quantised (packed uint32); the soft tokens must stay floats."""
    from mlx_specdec.media import encode_image, expand_images, vision_of

    b = load(bundles / "b4")
    ids = chat_ids(b.tokenizer, [{"role": "user", "content": image_placeholders(b, 1) + PROMPT}])
    patches = expand_images(b, ids, [folder / "image.png"])[1].patches[0]
    soft = encode_image(b, patches)
    tower = vision_of(b).vision(mx.array(patches.pixels), mx.array(patches.positions), patches.grid)
    assert mx.issubdtype(soft.dtype, mx.floating) and np.array_equal(np.array(soft), np.array(tower))


def test_convert_command_reports_the_kept_vision_tower(tmp_path):
    from typer.testing import CliRunner

    from mlx_specdec.cli import app

    out = tmp_path / "b"
    args = ["convert", "--target", str(MEDIA / "target"), "--drafter", str(MEDIA / "assistant"), "-o", str(out)]
    r = CliRunner().invoke(app, [*args, "--bits", "16"])
    assert r.exit_code == 0, r.output
    assert r.stdout.strip().endswith("MiB (read for images only)") and "vision tower" in r.stdout
