"""`specdec bench --image/--audio`: one prompt holding images and clips, its towers and prefill timed
(bench/media_prefill.py); the JSON's "media_prefill"; argument errors are one line, exit 2, before
anything loads. No timing asserts: only that the figures exist and add up."""

import json

import pytest
from typer.testing import CliRunner

from mlx_specdec.bench.media_prefill import MEDIA_PROMPT, MediaPrefill, prepare, time_media_prefill
from mlx_specdec.cli import app
from mlx_specdec.load import load

from .helpers.paths import DRAFTERS, FIXTURES, TARGET

runner = CliRunner()
MEDIA, AUDIO = FIXTURES / "media", FIXTURES / "media_audio"
IMAGE, CLIP = MEDIA / "image.png", AUDIO / "clip.wav"
BASE = ["bench", "--target", str(TARGET), "--drafter", str(DRAFTERS["dense"]), "-m", "2", "--trials", "1"]


@pytest.fixture(autouse=True)
def no_blas_reexec(monkeypatch):
    monkeypatch.setenv("SPECDEC_BLAS", "off")


def test_media_prefill_times_the_towers_and_the_prefill_of_the_expanded_prompt():
    bundle = load(target=AUDIO / "target", drafter=AUDIO / "assistant")
    got = time_media_prefill(bundle, prepare(bundle, [IMAGE], [CLIP]), trials=2)
    assert (got.images, got.clips, got.soft_tokens) == ([str(IMAGE)], [str(CLIP)], 60 + 38)
    assert got.prompt_tokens > got.soft_tokens + len(MEDIA_PROMPT.split())
    assert len(got.trials_total_ms) == 2 and got.encode_ms > 0 and got.prefill_ms > 0
    assert min(got.trials_total_ms) <= got.total_ms <= max(got.trials_total_ms)
    assert got.line().startswith("media prefill (1 image + 1 clip, 98 soft tokens in ")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--image", "{tmp}/none.png"], "--image {tmp}/none.png: no such file"),
        (["--audio", "{tmp}/none.wav"], "--audio {tmp}/none.wav: no such file"),
        (
            ["--image", str(IMAGE), "--json", str(IMAGE)],
            f"--json {IMAGE} is --image {IMAGE}: writing it would replace what this run reads; choose another --json",
        ),
    ],
    ids=["missing-image", "missing-clip", "json-over-image"],
)
def test_bench_media_argument_errors_are_one_line_before_the_model_loads(tmp_path, args, message):
    r = runner.invoke(app, BASE + [a.format(tmp=tmp_path) for a in args])
    assert r.exit_code == 2 and r.output.strip() == "error: " + message.format(tmp=tmp_path)


@pytest.mark.parametrize(
    "target, args, message",
    [
        (MEDIA, ["--image", str(CLIP)], f"{CLIP}: not an image Pillow can read"),
        (MEDIA, ["--audio", str(CLIP)], "has no audio tower"),
    ],
    ids=["not-an-image", "no-audio-tower"],
)
def test_bench_media_file_errors_are_one_line_before_the_bench_runs(monkeypatch, target, args, message):
    from mlx_specdec.bench import protocol

    monkeypatch.setattr(protocol, "run_bench", lambda *a, **k: pytest.fail("the bench ran before the check"))
    cli = ["bench", "--target", str(target / "target"), "--drafter", str(target / "assistant")]
    r = runner.invoke(app, cli + args)
    lines = r.output.strip().splitlines()  # the BLAS line (before the model loads), then the error
    assert r.exit_code == 1 and lines[-1].startswith("error: ") and message in lines[-1], r.output
    assert sum(line.startswith("error: ") for line in lines) == 1 and "tok/s" not in r.output


def test_bench_image_on_a_synthetic_model_is_refused():
    r = runner.invoke(app, ["bench", "--synthetic", "e2b", "--image", str(IMAGE)])
    assert r.exit_code == 2
    want = "error: --image and --audio need a model (MODEL, --target/--drafter, --demo), not --synthetic"
    assert r.output.strip() == want


@pytest.mark.slow  # a whole bench run (plain and auto on one prompt) before the media prompt
def test_bench_image_json_carries_the_media_prefill(tmp_path):
    prompts, out = tmp_path / "p.jsonl", tmp_path / "b.json"
    prompts.write_text('{"prompt": "Hello"}\n')
    cli = ["bench", "--target", str(MEDIA / "target"), "--drafter", str(MEDIA / "assistant"), "-m", "2"]
    cli += ["--trials", "1", "--k", "none", "--no-mlx-lm", "--prompts", str(prompts), "--json", str(out)]
    r = runner.invoke(app, cli + ["--image", str(IMAGE)])
    assert r.exit_code == 0, r.output
    got = json.loads(out.read_text())["media_prefill"]
    assert list(got) == [f.name for f in MediaPrefill.__dataclass_fields__.values()]
    assert got["soft_tokens"] == 60 and got["images"] == [str(IMAGE)] and got["clips"] == []
    assert "media prefill (1 image, 60 soft tokens in " in r.stdout
