"""What loading decides about a model, frozen: every later step reads it and none changes it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ..graph.compose import ImageInput, ScoreOutput
from ..labels import Labels
from ..preprocess import Preprocess


@dataclass(frozen=True)
class LoadOptions:
    """The user's choices, as given to :func:`blackbox.load` (None: detect). Kept so that a derived
    model (a randomised copy for a sanity check) is loaded with exactly the same choices."""

    preprocess: Preprocess | str | dict | None = None
    labels: Any = None
    device: str = "auto"
    input_name: str | None = None
    output_name: str | None = None
    output_kind: str | None = None
    layout: str | None = None
    inputs: Mapping[str, np.ndarray] | None = None
    batch_size: int | None = None


@dataclass(frozen=True, eq=False)
class ModelDescription:
    """Where the image goes in, where class scores come out, how samples batch, how pixels are prepared."""

    path: Path | None  # None for an in-memory graph
    image: ImageInput
    input_shape: tuple  # as declared by the model (ints, symbols or None)
    output: ScoreOutput  # its ``kind`` is the one in force (detected or overridden)
    output_shape: tuple
    output_kind_detected: str
    num_classes: int
    fixed_batch: int | None  # the declared batch when it is fixed
    batchable: bool  # several samples per call (dynamic batch, or a verified rewrite)
    batch_mode: str  # how batching was settled, in words
    constants: Mapping[str, np.ndarray] = field(default_factory=dict)  # values of the model's other inputs
    preprocess: Preprocess = field(default_factory=Preprocess)
    preprocess_source: str = ""
    preprocess_guessed: bool = False  # nobody said how to prepare pixels: a warning for the user
    labels: Labels | None = None
    requested_batch: int | None = None

    @property
    def layout(self) -> str:
        return self.image.layout

    def label(self, index: int) -> str:
        return self.labels.names[index] if self.labels is not None else f"class {index}"

    def input_sizes(self) -> Sequence[int]:
        return (self.image.channels, self.image.height, self.image.width)
