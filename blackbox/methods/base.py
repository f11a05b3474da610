"""What a method receives (Context) and returns (Result), and the registry that names methods."""

from __future__ import annotations

import dataclasses

import inspect
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

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


# A request beyond these is refused before any work: a typo such as n_masks=1000000000000 would
# otherwise allocate terabytes or run for days. Real use stays far below (RISE: 4000-8000 masks).
EVALUATION_LIMIT = 1_000_000
MEMORY_LIMIT = 8 << 30  # bytes a method's own arrays may take (samples, masks, gradients)

@dataclass(frozen=True)
class Param:
    """What one method parameter accepts, checked before any work (``MethodSpec.check_params``).

    ``type``: int, float, bool or str (default: the annotation, when it is one of those); ``min``/``max``
    bound numbers (``open_min``/``open_max``: strictly); ``choices``: the allowed values; ``lengths``:
    a list of that many values is accepted too, each checked like a scalar (``(2,)`` for (h, w));
    ``optional``: None is accepted (default: the annotation says ``| None`` or the default is None).
    Parameters without a declaration or a plain annotation (baselines, segmentations) are the method's
    to check.
    """

    type: type | None = None
    min: float | None = None
    max: float | None = None
    open_min: bool = False
    open_max: bool = False
    choices: tuple = ()
    lengths: tuple[int, ...] = ()
    optional: bool | None = None

    def expect(self) -> str:
        """The accepted values in words, for the error line."""
        if self.choices:
            return "one of " + ", ".join(map(str, self.choices))
        kind = {int: "a whole number", float: "a number", bool: "true or false", str: "a string"}[self.type]
        bounds = []
        if self.min is not None:
            bounds.append(f"{'>' if self.open_min else '>='} {self.min:g}")
        if self.max is not None:
            bounds.append(f"{'<' if self.open_max else '<='} {self.max:g}")
        text = kind + (" " + " and ".join(bounds) if bounds else "")
        if self.lengths:
            text += " or a list of " + " or ".join(map(str, self.lengths)) + " of them"
        if self.optional:
            text += ", or null"
        return text

    def _scalar_ok(self, value: Any) -> bool:
        if self.choices:
            return any(value == c and type(value) is type(c) for c in self.choices)
        if self.type is bool:
            return isinstance(value, (bool, np.bool_))
        if self.type is str:
            return isinstance(value, str)
        if isinstance(value, (bool, np.bool_)):
            return False
        if self.type is int and not isinstance(value, (int, np.integer)):
            return False
        if self.type is float:
            if not isinstance(value, (int, float, np.integer, np.floating)) or not math.isfinite(value):
                return False
        if self.min is not None and (value <= self.min if self.open_min else value < self.min):
            return False
        if self.max is not None and (value >= self.max if self.open_max else value > self.max):
            return False
        return True

    def check(self, method: str, name: str, value: Any) -> None:
        """Raise ParameterError naming the parameter, the value and what is accepted."""
        if value is None and self.optional:
            return
        if self._scalar_ok(value):
            return
        if self.lengths and isinstance(value, (list, tuple, np.ndarray)) and np.ndim(value) == 1 \
                and len(value) in self.lengths and all(self._scalar_ok(v) for v in list(value)):
            return
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ParameterError(f"{method}: {name}={shown} is not valid; {name} must be {self.expect()}")


def _annotation_param(annotation: Any, default: Any) -> Param | None:
    """A Param from a plain annotation (int, float, bool, str, optionally ``| None``); None otherwise."""
    optional = default is None
    args = typing.get_args(annotation) if isinstance(annotation, types.UnionType) or \
        typing.get_origin(annotation) is typing.Union else ()
    if args:
        rest = [a for a in args if a is not type(None)]
        optional = optional or len(rest) < len(args)
        if len(rest) != 1:
            return None
        annotation = rest[0]
    if annotation in (int, float, bool, str):
        return Param(type=annotation, optional=optional)
    return None


def _declared(function: Callable, declared: Mapping[str, Param]) -> dict[str, Param]:
    """Each keyword parameter's Param: the declaration, completed from the annotation and default."""
    try:
        signature = inspect.signature(function, eval_str=True)
    except (NameError, TypeError):
        signature = inspect.signature(function)
    out = {}
    for name, parameter in signature.parameters.items():
        if parameter.kind is not parameter.KEYWORD_ONLY:
            continue
        implied = _annotation_param(parameter.annotation, parameter.default)
        spec = declared.get(name)
        if spec is None:
            if implied is not None:
                out[name] = implied
            continue
        kind = spec.type or (implied.type if implied else None)
        if kind is None and spec.choices:
            kind = type(spec.choices[0])
        if kind is None:
            raise TypeError(f"parameter {name!r} of {function.__name__} needs a type (annotation or Param(type=...))")
        optional = spec.optional if spec.optional is not None else \
            (implied.optional if implied else parameter.default is None)
        out[name] = Param(type=kind, min=spec.min, max=spec.max, open_min=spec.open_min, open_max=spec.open_max,
                          choices=spec.choices, lengths=spec.lengths, optional=optional)
    unknown = set(declared) - set(out)
    if unknown:
        raise TypeError(f"{function.__name__} declares Param for unknown parameters {sorted(unknown)}")
    return out


@dataclass(frozen=True)
class MethodSpec:
    name: str
    function: Callable[..., Result]
    default_score: str
    kind: str  # "perturbation" or "gradient"
    summary: str
    params: Mapping[str, Param] = field(default_factory=dict)
    # model evaluations (or gradient passes) the resolved parameters ask for
    evaluations: Callable[[dict[str, Any]], int] | None = None
    # bytes of the method's own arrays for resolved parameters, an input of internal shape (C, H, W)
    # and the model's layout ("NCHW", "NHWC", "NHW")
    memory: Callable[[dict[str, Any], tuple[int, int, int], str], int] | None = None
    # several images at once: fn(contexts, **params) -> one Result per context, equal to calling
    # ``function`` on each; set with :func:`batched`. ``blackbox.explain_many`` uses it when present.
    many: Callable[..., list[Result]] | None = None

    def parameters(self) -> dict[str, Any]:
        """The method's own keyword parameters and their defaults."""
        signature = inspect.signature(self.function)
        return {n: p.default for n, p in signature.parameters.items() if p.kind is p.KEYWORD_ONLY}

    def check_params(self, params: Mapping[str, Any], shape: Sequence[int] | None = None,
                     layout: str = "NCHW") -> None:
        """Refuse unknown names, values outside their declaration and requests over the evaluation
        budget; with ``shape`` (internal C, H, W of the model input) and the model's ``layout``, also
        over the memory budget. The one check both ``blackbox.explain`` and the CLI run before any work."""
        known = self.parameters()
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ParameterError(f"method {self.name!r} has no parameter {', '.join(unknown)}; "
                                 f"its parameters are {', '.join(known) or 'none'}")
        for name, value in params.items():
            if name in self.params:
                self.params[name].check(self.name, name, value)
        resolved = {**known, **params}
        if self.evaluations is not None:
            count = int(self.evaluations(resolved))
            if count > EVALUATION_LIMIT:
                raise ParameterError(f"{self.name}: {_given(params)} asks for {count:,} model evaluations; the "
                                     f"limit is {EVALUATION_LIMIT:,} (lower the count)")
        if self.memory is not None and shape is not None:
            size = int(self.memory(resolved, tuple(int(s) for s in shape), layout))
            if size > MEMORY_LIMIT:
                raise ParameterError(f"{self.name}: {_given(params)} needs about {size / (1 << 30):,.1f} GiB for a "
                                     f"{'x'.join(map(str, shape))} input; the limit is "
                                     f"{MEMORY_LIMIT >> 30} GiB (use smaller counts or coarser settings)")


_BARE_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/+-]*$")


def parse_value(text: str, item: str) -> Any:
    """One ``--param KEY=VALUE`` value: JSON (``16``, ``[8,8]``, ``true``, ``"text"``), or a bare word such
    as ``mean`` or ``riemann_left`` taken as that string. Anything else that is not JSON (``[8,``, ``8.5.3``,
    ``NaN``) is refused here: taking it as a string would hide the typo."""

    def refuse(constant: str) -> Any:
        raise ValueError(constant)

    try:
        return json.loads(text, parse_constant=refuse)
    except (json.JSONDecodeError, ValueError) as error:
        if _BARE_WORD.match(text):
            return text
        why = f"{error.msg} at column {error.colno}" if isinstance(error, json.JSONDecodeError) else \
            f"{error} is not a JSON number"
        raise ParameterError(f"--param {item!r}: {text!r} is not valid JSON ({why}); write numbers, lists "
                             f"like [8,8], true/false, or quote strings") from None


def _given(params: Mapping[str, Any]) -> str:
    """The user's parameters for a message ("the defaults" when none)."""
    return ", ".join(f"{k}={v!r}" for k, v in params.items())[:120] or "the defaults"


METHODS: dict[str, MethodSpec] = {}


def register(name: str, *, default_score: str, kind: str, summary: str, params: Mapping[str, Param] | None = None,
             evaluations: Callable[[dict[str, Any]], int] | None = None,
             memory: Callable[[dict[str, Any], tuple[int, int, int], str], int] | None = None) -> Callable:
    """Decorator: add a method function to ``METHODS`` under ``name``.

    ``params`` declares what each parameter accepts beyond its annotation (ranges, choices, lists);
    ``evaluations`` and ``memory`` give the cost of resolved parameters, checked against
    ``EVALUATION_LIMIT`` and ``MEMORY_LIMIT`` before any work."""

    def wrap(function: Callable[..., Result]) -> Callable[..., Result]:
        METHODS[name] = MethodSpec(name, function, default_score, kind, summary, _declared(function, params or {}),
                                   evaluations, memory)
        return function

    return wrap


def batched(name: str) -> Callable:
    """Decorator: the several-images form of the registered method ``name``, ``fn(contexts, **params) ->
    list[Result]`` (same keyword parameters; results equal to one call per context, to float tolerance),
    so a batch of images shares model calls."""

    def wrap(function: Callable[..., list[Result]]) -> Callable[..., list[Result]]:
        spec = METHODS[name]
        METHODS[name] = dataclasses.replace(spec, many=function)
        return function

    return wrap
