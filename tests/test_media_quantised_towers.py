"""Towers quantised in the source, as mlx-community's checkpoints (made by mlx-vlm) may have them:
they load as stored (each module's group size and bits read from its tensors' shapes), answer
images and clips, and `convert` copies them into the bundle as they are.

The source is built here from the E2B-shaped fixture with both towers (tests/fixtures/media_audio):
every tower linear whose input width allows it is quantised with mx.quantize under the
checkpoint's own names, at 4 bits in groups of 32, and the audio feed-forward outputs at 8 bits in
groups of 64 (so one checkpoint holds two settings, as mlx-vlm's mixed recipes write).
"""

import json
import shutil

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest

import weights_convert
from mlx_specdec.decode import generate
from mlx_specdec.load import load
from mlx_specdec.media_memory import media_bytes
from mlx_specdec.models.audio import Audio, AudioArgs
from mlx_specdec.models.quantise import quantise_as_stored
from mlx_specdec.models.vision import Vision, VisionArgs
from mlx_specdec.settings import GenerationSettings

from .helpers.media import media_turn
from .helpers.paths import FIXTURES

AUDIO = FIXTURES / "media_audio"
IMAGE = FIXTURES / "media" / "image.png"


def tower_linears(config: dict) -> dict[str, int]:
    """{checkpoint name of each tower linear's weight: its input width}."""
    out = {}
    for cls, args in ((Vision, VisionArgs), (Audio, AudioArgs)):
        for path, module in cls(args.from_config(config)).named_modules():
            if isinstance(module, nn.Linear):
                out[f"model.{path}.weight"] = module.weight.shape[-1]
    return out


def settings_for(name: str, width: int) -> dict | None:
    if "ffw_layer_2" in name and width % 64 == 0:
        return {"group_size": 64, "bits": 8}
    return {"group_size": 32, "bits": 4} if width % 32 == 0 else None


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A copy of the fixture's target with its towers quantised (text kept in floats)."""
    out = tmp_path_factory.mktemp("qtowers") / "target"
    shutil.copytree(AUDIO / "target", out)
    config = json.loads((out / "config.json").read_text())
    weights = dict(mx.load(str(out / "model.safetensors")))
    quantised = 0
    for name, width in tower_linears(config).items():
        params = settings_for(name, width)
        if params is None:
            continue
        module = name.removesuffix(".weight")
        weights[name], weights[f"{module}.scales"], weights[f"{module}.biases"] = mx.quantize(weights[name], **params)
        quantised += 1
    mx.save_safetensors(str(out / "model.safetensors"), weights, metadata={"format": "mlx"})
    config["quantization"] = {"group_size": 32, "bits": 4, "mode": "affine"}
    (out / "config.json").write_text(json.dumps(config))
    return out, quantised


def media_prompt(b):
    return media_turn(b, "Say what you see and hear.", [IMAGE], [AUDIO / "clip.wav"])


def test_quantise_as_stored_reads_each_modules_group_and_bits_from_its_shapes():
    layer = nn.Linear(128, 8, bias=False)
    mixed = nn.Sequential(layer, nn.Linear(8, 8, bias=False))
    w, s, b = mx.quantize(layer.weight, group_size=64, bits=8)
    assert quantise_as_stored(mixed, {"layers.0.weight": w, "layers.0.scales": s, "layers.0.biases": b}) == 1
    q = mixed.layers[0]
    assert isinstance(q, nn.QuantizedLinear) and (q.group_size, q.bits) == (64, 8)
    assert isinstance(mixed.layers[1], nn.Linear) and not isinstance(mixed.layers[1], nn.QuantizedLinear)
    with pytest.raises(ValueError, match="fit no quantisation"):  # 32 words of 32 bits over 96 inputs: no bit width
        quantise_as_stored(nn.Sequential(nn.Linear(96, 8)), {"layers.0.weight": w, "layers.0.scales": s})


@pytest.mark.slow  # a source built and a conversion: ~6 s
def test_quantised_towers_load_as_stored_answer_media_and_convert_copies_them(source, tmp_path):
    folder, quantised = source
    b = load(target=folder, drafter=AUDIO / "assistant")
    ids, media = media_prompt(b)
    plain, spec = (generate(b, ids, GenerationSettings(max_tokens=12, draft=k), media=media).tokens for k in (0, 3))
    assert spec == plain
    towers = (b.vision.vision, b.audio[0])
    counts = [sum(isinstance(m, nn.QuantizedLinear) for _, m in t.named_modules()) for t in towers]
    assert min(counts) > 0 and sum(counts) == quantised

    # The towers' soft tokens stay near the float towers' (quantisation noise, not garbage).
    floats = load(target=AUDIO / "target", drafter=AUDIO / "assistant")
    _, float_media = media_prompt(floats)
    got, want = np.array(media.soft).ravel(), np.array(float_media.soft).ravel()
    assert np.corrcoef(got, want)[0, 1] > 0.98  # measured: 0.996

    lines = []
    bundle = tmp_path / "b4"
    weights_convert.convert(str(folder), str(AUDIO / "assistant"), bundle, bits=4, group_size=32, log=lines.append)
    assert any(line.startswith("vision tower: ") and "already quantised" in line for line in lines), lines
    assert any(line.startswith("audio tower: ") and "already quantised" in line for line in lines), lines
    kept = [k for part in ("vision", "audio") for k in mx.load(str(bundle / part / "model.safetensors"))]
    assert sum(k.endswith(".scales") for k in kept) == quantised
    converted = load(bundle)
    ids4, media4 = media_prompt(converted)
    assert ids4 == ids
    assert np.array_equal(np.array(media4.soft), np.array(media.soft))  # the same towers, copied as stored
    spec4 = generate(converted, ids4, GenerationSettings(max_tokens=12, draft=3), media=media4).tokens
    plain4 = generate(converted, ids4, GenerationSettings(max_tokens=12, draft=0), media=media4).tokens
    assert spec4 == plain4
    assert media_bytes(bundle, True, True) < media_bytes(AUDIO / "target", True, True)
