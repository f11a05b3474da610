"""What a method receives (Context) and returns (Result), and the registry that names methods."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from tqdm.auto import tqdm

from ..errors import ParameterError

if TYPE_CHECKING:
    from ..inputs import Sample
    from ..model import Model


@dataclass
class Result:
    """A method's output. ``attributions`` in the method's native form (pixel methods: internal
    [C, H, W]); ``heatmap`` at model-input resolution [H, W]."""

    attributions: np.ndarray
    heatmap: np.ndarray
    n_evals: int
    extras: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    pixel_attributions: bool = True  # attributions shaped like the internal input -> convert to model layout


@dataclass
class Context:
    """Everything a method may use: the model, one sample in model space, the target and the seed."""

    model: "Model"
    sample: "Sample"
    target: int
    score: str
    seed: int | None
    progress: bool = True

    @property
    def x(self) -> np.ndarray:
        return self.sample.x

    @property
    def shape(self) -> tuple[int, int, int]:
        c, h, w = self.sample.x.shape
        return c, h, w

    def rng(self) -> np.random.Generator:
        return np.random.default_rng(self.seed)

    def bar(self, total: int, desc: str) -> tqdm:
        """A progress bar on stderr (hidden when progress is off or for tiny jobs)."""
        return tqdm(total=total, desc=desc, unit="eval", disable=not self.progress or total < 64, leave=False,
                    dynamic_ncols=True)

    def target_score(self, score: str | None = None) -> float:
        return float(self.model.scores(self.x, score=score or self.score)[0, self.target])


@dataclass(frozen=True)
class MethodSpec:
    name: str
    function: Callable[..., Result]
    default_score: str
    kind: str  # "perturbation" or "gradient"
    summary: str

    def parameters(self) -> dict[str, Any]:
        """The method's own keyword parameters and their defaults."""
        signature = inspect.signature(self.function)
        return {n: p.default for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}

    def check_params(self, params: dict[str, Any]) -> None:
        known = self.parameters()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ParameterError(f"method {self.name!r} has no parameter {', '.join(unknown)}; "
                                 f"its parameters are {', '.join(known) or 'none'}")


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, default_score: str, kind: str, summary: str) -> Callable:
    """Decorator: add a method function to ``METHODS`` under ``name``."""

    def wrap(function: Callable[..., Result]) -> Callable[..., Result]:
        METHODS[name] = MethodSpec(name, function, default_score, kind, summary)
        return function

    return wrap
