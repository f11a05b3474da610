"""What a gradient rule may use: :class:`GradContext` (names, emission, forward shapes and constants).

Rules receive a context and never see the walk (``core.py``); the walk creates one context per gradient
graph and hands it to every rule it calls.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ...errors import ModelError, UnsupportedOpError
from ..onnx_utils import (
    FLOAT_TYPES,
    ConstantValues,
    FreshNames,
    all_inputs,
    default_opset,
    value_types,
)
from .errors import cannot_differentiate, unknown_size
from .registry import Rule, RuleSet

PREFIX = "grad/"


class GradContext:
    """What a rule may use: names, emission, shapes/dtypes/constants of forward tensors, helpers."""

    def __init__(self, model: onnx.ModelProto, needs: set[str], rule_set: RuleSet):
        self.opset = default_opset(model)
        self.rule_set = rule_set
        self.rectifier = rule_set.rectifier  # how gradients cross Relu / rectifying Clip
        self.rules: Mapping[str, Rule] = rule_set.rules()  # the rules in effect (overrides included)
        self.types = value_types(model)
        self.value = ConstantValues(model.graph)  # value(name): an initializer's array, else None
        self._needs = needs
        self._names = FreshNames(model.graph, PREFIX)
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        self.uses: dict[str, int] = defaultdict(int)
        for n in model.graph.node:
            for i in all_inputs(n):  # subgraph reads count as uses
                self.uses[i] += 1
        for o in model.graph.output:
            self.uses[o.name] += 1
        # gradient tensor -> forward tensor: the gradient is already zero wherever that tensor is <= 0
        # (set by a rule that can mask cheaply, read by the Relu rule to skip its own mask)
        self.zero_where_nonpositive: dict[str, str] = {}
        self._shape_cache: dict[str, str] = {}
        self._const_cache: dict[tuple, str] = {}
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.node: onnx.NodeProto | None = None  # the forward node whose rule is running

    # ---------------------------------------------------------------------------------- names, emit
    def reserve(self, name: str) -> str:
        """``name`` if no tensor uses it yet, else a fresh variant; either way it is taken from now on."""
        return self._names.reserve(name)

    def fresh(self, hint: str) -> str:
        return self._names.fresh(hint)

    def emit(self, op_type: str, inputs: Sequence[str], outputs: int | Sequence[str] = 1,
             **attrs) -> str | list[str]:
        """Append a node; returns its output name (one output) or names (``outputs`` > 1 or a list)."""
        if isinstance(outputs, int):
            names = [self.fresh(op_type) for _ in range(outputs)]
            single = outputs == 1
        else:
            names = list(outputs)
            single = False
        attrs = {k: v for k, v in attrs.items() if v is not None}
        where = self.node.name if self.node is not None and self.node.name else ""
        node = helper.make_node(op_type, list(inputs), names,
                                name=self.fresh(f"{where}/{op_type}" if where else op_type), **attrs)
        self.nodes.append(node)
        return names[0] if single else names

    def const(self, value, dtype=None, hint: str = "const") -> str:
        arr = np.asarray(value, dtype=dtype)
        key = None
        if arr.size <= 64:
            key = (arr.dtype.str, arr.shape, arr.tobytes())
            if key in self._const_cache:
                return self._const_cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(arr, name))
        if key is not None:
            self._const_cache[key] = name
        return name

    def ints(self, values) -> str:
        return self.const(np.asarray(values, dtype=np.int64).reshape(-1), hint="ints")

    def scalar(self, value: float, like: str) -> str:
        """A rank-0 constant with the element type of the forward tensor ``like``."""
        return self.const(np.asarray(value, dtype=self.np_dtype(like)), hint="scalar")

    # --------------------------------------------------------------------------------- forward info
    def needs(self, name: str) -> bool:
        """Whether the forward tensor ``name`` wants a gradient (differentiable and on a path)."""
        return bool(name) and name in self._needs

    def dtype(self, name: str) -> int:
        t = self.types.get(name)
        if t is None or not t[0]:
            raise ModelError(f"the type of tensor {name!r} could not be inferred")
        return t[0]

    def np_dtype(self, name: str) -> np.dtype:
        return np.dtype(helper.tensor_dtype_to_np_dtype(self.dtype(name)))

    def is_float(self, name: str) -> bool:
        t = self.types.get(name)
        return t is not None and t[0] in FLOAT_TYPES

    def shape(self, name: str) -> list | None:
        """Inferred dims (int fixed, str symbolic, None unknown) or None when the rank is unknown."""
        t = self.types.get(name)
        return None if t is None else t[1]

    def rank(self, name: str) -> int:
        s = self.shape(name)
        if s is None:
            v = self.value(name)
            if v is not None:
                return v.ndim
            assert self.node is not None
            raise unknown_size(self.node, name)
        return len(s)

    def static_shape(self, name: str) -> list[int] | None:
        s = self.shape(name)
        if s is None or not all(isinstance(d, int) for d in s):
            return None
        return list(s)

    def static_dims(self, name: str, axes: Sequence[int]) -> list[int]:
        """Fixed sizes of ``axes`` of ``name``; raises the node's UnsupportedOpError when unknown."""
        s = self.shape(name)
        out = []
        for a in axes:
            d = None if s is None or a >= len(s) or a < -len(s) else s[a]
            if not isinstance(d, int):
                assert self.node is not None
                raise unknown_size(self.node, name, a)
            out.append(d)
        return out

    def error(self, detail: str = "") -> UnsupportedOpError:
        """The running rule's one-line refusal: the rule exists, ``detail`` says what it cannot handle."""
        assert self.node is not None
        return cannot_differentiate(self.node, detail or "its rule does not handle this case")

    # ------------------------------------------------------------------------------------- helpers
    def shape_of(self, name: str) -> str:
        """``Shape(name)`` as an int64 tensor (a constant when the shape is fixed)."""
        if name not in self._shape_cache:
            s = self.static_shape(name)
            self._shape_cache[name] = self.ints(s) if s is not None else self.emit("Shape", [name])
        return self._shape_cache[name]

    def reshape_like(self, grad: str, like: str) -> str:
        """``grad`` reshaped to the shape of ``like``; a constant target (-1 for the one dynamic dim,
        usually the batch) when possible, which saves a Shape node per reshape at run time."""
        s = self.shape(like)
        if s is not None and sum(not isinstance(d, int) for d in s) == 1 and \
                all(d > 0 for d in s if isinstance(d, int)):
            return self.emit("Reshape", [grad, self.ints([d if isinstance(d, int) else -1 for d in s])])
        return self.emit("Reshape", [grad, self.shape_of(like)])

    def expand_over(self, grad: str, like: str, axes: Sequence[int]) -> str:
        """Broadcast ``grad`` (shaped like ``like`` with size 1 on ``axes``) back to ``like``'s shape. A
        constant target (1 on the other axes) when the sizes of ``axes`` are fixed: no Shape at run time."""
        s = self.shape(like)
        if s is not None and all(isinstance(s[a], int) for a in axes):
            target = [s[a] if a in axes else 1 for a in range(len(s))]
            return self.emit("Expand", [grad, self.ints(target)])
        return self.emit("Expand", [grad, self.shape_of(like)])

    def size_ratio(self, small: str, large: str) -> str:
        """``Size(small) / Size(large)`` in the element type of ``large`` (1 / the count of elements a
        reduction or global pool averaged, when the sizes are known only at run time)."""
        to = self.dtype(large)
        return self.emit("Div", [self.emit("Cast", [self.emit("Size", [small])], to=to),
                                 self.emit("Cast", [self.emit("Size", [large])], to=to)])

    def zeros_like(self, like: str) -> str:
        zero = numpy_helper.from_array(np.zeros(1, dtype=self.np_dtype(like)), "value")
        return self.emit("ConstantOfShape", [self.shape_of(like)], value=zero)

    def reduce(self, op: str, x: str, axes: Sequence[int], keepdims: bool = True) -> str:
        """``op`` in (ReduceSum, ReduceMean, ReduceMax, ...) over ``axes`` in this opset's form."""
        axes = [int(a) for a in axes]
        as_input = op == "ReduceSum" and self.opset >= 13 or self.opset >= 18
        if as_input:
            return self.emit(op, [x, self.ints(axes)], keepdims=int(keepdims))
        return self.emit(op, [x], axes=axes, keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Unsqueeze", [x, self.ints(sorted(axes))])

    def squeeze(self, x: str, axes: Sequence[int]) -> str:
        return self.emit("Squeeze", [x, self.ints(sorted(axes))])

    def unbroadcast(self, grad: str, x: str, y: str) -> str:
        """Sum ``grad`` (shaped like the broadcast result ``y``) down to the shape of input ``x``."""
        sx, sy = self.shape(x), self.shape(y)
        if sx is not None and sy is not None and len(sx) <= len(sy):
            lead = len(sy) - len(sx)
            axes = list(range(lead))
            static = True
            for i, (dx, dy) in enumerate(zip(sx, sy[lead:])):
                if (dx == dy and dx is not None) or (isinstance(dx, int) and dx != 1):
                    continue  # same size, or a fixed size other than 1 (never broadcast)
                if dx == 1:
                    if dy != 1:
                        axes.append(lead + i)
                else:
                    static = False
                    break
            if static:
                if not axes:
                    return grad
                r = self.reduce("ReduceSum", grad, axes, keepdims=True)
                return self.reshape_like(r, x)
        # Decide at run time: sum over every axis where x (left-padded with ones) has size 1.
        gshape = self.emit("Shape", [grad])
        xshape = self.emit("Shape", [x])
        rank_g = self.emit("Shape", [gshape])
        rank_x = self.emit("Shape", [xshape])
        lead = self.emit("Sub", [rank_g, rank_x])
        ones = self.emit("ConstantOfShape", [lead],
                         value=numpy_helper.from_array(np.ones(1, np.int64), "value"))
        padded = self.emit("Concat", [ones, xshape], axis=0)
        mask = self.emit("Equal", [padded, self.ints([1])])
        axes = self.emit("Reshape", [self.emit("NonZero", [mask]), self.ints([-1])])
        r = self.emit("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
        return self.emit("Reshape", [r, xshape])

    def dim_of(self, name: str, axis: int) -> str:
        """Size of ``axis`` of ``name`` as an int64 tensor of shape [1]."""
        s = self.shape(name)
        if s is not None and isinstance(s[axis], int):
            return self.ints([s[axis]])
        r = self.rank(name)
        a = axis % r
        return self.emit("Shape", [name], start=a, end=a + 1)


__all__ = ["PREFIX", "GradContext"]
