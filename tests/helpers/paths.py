"""The tiny real Gemma 4 checkpoints under tests/fixtures/ (see its README)."""

from pathlib import Path

FIXTURES = Path(__file__).parents[1] / "fixtures"
TARGET = FIXTURES / "target_text"
TARGET_MM = FIXTURES / "target_mm"
DRAFTERS = {"dense": FIXTURES / "drafter_dense", "centroid": FIXTURES / "drafter_centroid"}
