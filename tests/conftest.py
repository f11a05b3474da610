"""Shared fixtures: where the real third-party models live, and the project's own example models."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "real"
MODELS = ROOT / "models"
IMAGENET_LABELS = REAL / "labels" / "imagenet-synsets.txt"


def real(*parts: str) -> Path:
    path = REAL.joinpath(*parts)
    if not path.exists():  # a missing data set must not turn the real-model tests into silent passes
        pytest.fail(f"real third-party data not found at {path} (expected ../shared/real beside the repo)")
    return path


@pytest.fixture(scope="session")
def shapes_model():
    import blackbox

    return blackbox.load(MODELS / "shapes.onnx", device="cpu")


@pytest.fixture(scope="session")
def shortcut_model():
    import blackbox

    return blackbox.load(MODELS / "shapes-shortcut.onnx", device="cpu")
