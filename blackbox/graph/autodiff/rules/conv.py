"""Linear layers: Conv, ConvTranspose, Gemm, MatMul.

Only input gradients are built; weights and biases are constants of the explained model (a rule raises
when a weight depends on the input, e.g. a dynamic convolution kernel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import numpy_helper

from ..registry import rule
from ._helpers import constant_inputs, get_attr, only_first


def transpose_pads(ins: Sequence[int], outs: Sequence[int], k: Sequence[int], s: Sequence[int],
                   d: Sequence[int], pb: Sequence[int], pe: Sequence[int]):
    """``(pads, output_padding)`` for a ConvTranspose that maps a window grid back onto the input.

    The forward op (Conv or a pool) has windows ``o*s - pb + j*d`` (``j < k``) over an input of size
    ``ins``, ``outs`` windows per axis. The adjoint is a ConvTranspose with the same strides,
    dilations and pads, and ``output_padding = in - ((out-1)*s - pb - pe + d*(k-1) + 1)`` (the input
    rows no window reaches; e.g. even inputs with stride 2). We never use ``output_shape``. Where that
    formula leaves [0, stride) — ceil_mode windows that run past the padded input — the end pad is
    adjusted instead, so the result still has exactly ``ins`` elements.
    """
    ends, extra = [], []
    for i in range(len(ins)):
        full = (outs[i] - 1) * s[i] + d[i] * (k[i] - 1) + 1 - pb[i]  # uncropped length past pb
        op = ins[i] - (full - pe[i])
        if 0 <= op < s[i]:
            ends.append(pe[i])
            extra.append(op)
        elif full >= ins[i]:
            ends.append(full - ins[i])
            extra.append(0)
        else:
            ends.append(0)
            extra.append(ins[i] - full)
    return list(pb) + ends, extra


def spatial_attrs(ctx, node, x: str, kernel: Sequence[int] | None = None):
    """(n, kernel, strides, dilations, pads_begin, pads_end) of a conv/pool node."""
    n = ctx.rank(x) - 2
    if get_attr(node, "auto_pad", "NOTSET") not in ("NOTSET", ""):
        raise ctx.error("auto_pad on an input of unknown spatial size")
    k = list(get_attr(node, "kernel_shape", kernel or []))
    if len(k) != n:
        raise ctx.error("kernel shape unknown")
    s = list(get_attr(node, "strides", [1] * n))
    d = list(get_attr(node, "dilations", [1] * n))
    pads = list(get_attr(node, "pads", [0] * (2 * n)))
    return n, k, s, d, pads[:n], pads[n:]


@rule("Conv")
def conv(ctx, node, grads):
    x, w = node.input[0], node.input[1]
    y = node.output[0]
    constant_inputs(ctx, node, what="input-dependent weights")
    wshape = ctx.static_shape(w)
    n, k, s, d, pb, pe = spatial_attrs(ctx, node, x, wshape[2:] if wshape else None)
    ins = ctx.static_dims(x, range(2, 2 + n))
    outs = ctx.static_dims(y, range(2, 2 + n))
    group = get_attr(node, "group", 1)
    wv = ctx.value(w)
    gx = None
    if wv is not None and all(v == 1 for v in s):
        gx = _adjoint_stride1(ctx, grads[0], wv, k, d, pb, ins, outs, group)
    if gx is None:
        pads, extra = transpose_pads(ins, outs, k, s, d, pb, pe)
        gx = ctx.emit("ConvTranspose", [grads[0], w], kernel_shape=k, strides=s, dilations=d, pads=pads,
                      output_padding=extra, group=group)
    return only_first(node, gx)


# Why not always ConvTranspose: ONNX Runtime's CPU ConvTranspose is a GEMM plus col2im, 1.5-2x the
# time of the forward Conv of the same layer, while Conv runs on MLAS's blocked (NCHWc) kernels. With a
# constant kernel and stride 1 the adjoint is an ordinary Conv. Strided layers keep ConvTranspose: the
# polyphase rewrite (one Conv computing all s x s phases as channels, then DepthToSpace) was measured
# 5-10x slower, because ONNX Runtime's DepthToSpace/Transpose with a small inner block crawls.
# Measured again on ONNX Runtime 1.31 for the ResNet-like stem's adjoint (8 -> 3 channels, 3x3/2,
# 112 -> 224, batch 32; CPU ms, one thread): ConvTranspose 7.4; the phases as one Conv 7.3 (12 output
# channels) or 8.7 (16, NCHWc) before any interleaving; phases + a one-hot k2/s2 ConvTranspose to
# interleave 11.9; DepthToSpace alone 19 (two threads), MaxUnpool, Gather or Resize+mask interleaves
# 15-26. A zero-interleaved gradient is 4x the data of the strided one. So ConvTranspose stays.

def _transposed_kernel(w, group: int):
    """[Cout, Cin/g, *k] -> [Cin, Cout/g, *k]: the adjoint's channel mixing, group by group."""
    cout, cin_g = w.shape[:2]
    spatial = w.shape[2:]
    wg = w.reshape(group, cout // group, cin_g, *spatial)
    return wg.swapaxes(1, 2).reshape(group * cin_g, cout // group, *spatial)


def _adjoint_stride1(ctx, g, w, k, d, pb, ins, outs, group):
    """Stride 1: the adjoint is a Conv with the flipped, transposed kernel (pads chosen so that the
    output is exactly the input's size); None when that would need negative pads."""
    reach = [di * (ki - 1) for di, ki in zip(d, k)]
    begin = [r - p for r, p in zip(reach, pb)]
    end = [i - o + p for i, o, p in zip(ins, outs, pb)]
    if min(begin + end) < 0:
        return None
    n = len(k)
    wt = _transposed_kernel(w, group)
    wt = wt[(slice(None), slice(None)) + (slice(None, None, -1),) * n]
    kernel = ctx.const(wt.astype(w.dtype, copy=True), hint="adjoint_kernel")
    return ctx.emit("Conv", [g, kernel], kernel_shape=list(k), dilations=list(d), pads=begin + end,
                    group=group)


@rule("ConvTranspose")
def conv_transpose(ctx, node, grads):
    x, w = node.input[0], node.input[1]
    constant_inputs(ctx, node, what="input-dependent weights")
    if get_attr(node, "output_shape") is not None:
        raise ctx.error("output_shape on an input of unknown spatial size")
    wshape = ctx.static_shape(w)
    n, k, s, d, pb, pe = spatial_attrs(ctx, node, x, wshape[2:] if wshape else None)
    # ConvTranspose(W) is the adjoint of Conv(W) with the same strides, pads, dilations and groups.
    gx = ctx.emit("Conv", [grads[0], w], kernel_shape=k, strides=s, dilations=d, pads=pb + pe,
                  group=get_attr(node, "group", 1))
    xs = ctx.shape(x)
    ys = ctx.shape(node.output[0])
    if xs is not None and ys is not None:
        extra = False
        for i in range(n):
            L, ins = ys[2 + i], xs[2 + i]
            if isinstance(L, int) and isinstance(ins, int):
                extra |= (L + pb[i] + pe[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 != ins
        if extra:  # output_padding >= stride made Conv's result longer than the input: crop
            gx = ctx.emit("Slice", [gx, ctx.ints([0] * n), ctx.ints(ctx.static_dims(x, range(2, 2 + n))),
                                    ctx.ints(list(range(2, 2 + n)))])
    return only_first(node, gx)


@rule("Gemm")
def gemm(ctx, node, grads):
    a, b = node.input[0], node.input[1]
    c = node.input[2] if len(node.input) > 2 else ""
    g = grads[0]
    alpha = float(get_attr(node, "alpha", 1.0))
    beta = float(get_attr(node, "beta", 1.0))
    ta = int(get_attr(node, "transA", 0))
    tb = int(get_attr(node, "transB", 0))
    ga = gb = gc = None
    if ctx.needs(a):  # dA' = alpha g B'^T
        if ta:
            ga = ctx.emit("Gemm", [b, g], alpha=alpha, transA=tb, transB=1)
        else:
            ga = ctx.emit("Gemm", [g, b], alpha=alpha, transB=1 - tb)
    if ctx.needs(b):  # dB' = alpha A'^T g
        if tb:
            gb = ctx.emit("Gemm", [g, a], alpha=alpha, transA=1, transB=ta)
        else:
            gb = ctx.emit("Gemm", [a, g], alpha=alpha, transA=1 - ta)
    if c and ctx.needs(c):
        gcs = g if beta == 1.0 else ctx.emit("Mul", [g, ctx.scalar(beta, c)])
        gc = ctx.unbroadcast(gcs, c, node.output[0])
    return [ga, gb, gc][: len(node.input)]


def _swap_last(ctx, t: str, rank: int) -> str:
    perm = list(range(rank))
    perm[-1], perm[-2] = perm[-2], perm[-1]
    return ctx.emit("Transpose", [t], perm=perm)


@rule("MatMul")
def matmul(ctx, node, grads):
    a, b = node.input[0], node.input[1]
    y = node.output[0]
    g = grads[0]
    ra, rb = ctx.rank(a), ctx.rank(b)
    ry = ctx.rank(y)
    # lift vectors to matrices, as numpy's matmul does
    a2 = a if ra >= 2 else ctx.unsqueeze(a, [0])
    b2 = b if rb >= 2 else ctx.unsqueeze(b, [1])
    g2, rg = g, ry
    if ra == 1:
        g2 = ctx.unsqueeze(g2, [rg - 1 if rg >= 1 else 0])
        rg += 1
    if rb == 1:
        g2 = ctx.unsqueeze(g2, [rg])
        rg += 1
    sy = ctx.shape(y)
    batch = sy[: len(sy) - (ra >= 2) - (rb >= 2)]  # broadcast batch dims of the product
    ga = gb = None
    if ctx.needs(a):
        da = ctx.emit("MatMul", [g2, _swap_last(ctx, b2, max(rb, 2))])
        ga = _sum_to(ctx, da, a, batch)
    if ctx.needs(b):
        db = ctx.emit("MatMul", [_swap_last(ctx, a2, max(ra, 2)), g2])
        gb = _sum_to(ctx, db, b, batch)
    return [ga, gb]


def _sum_to(ctx, grad: str, x: str, batch: list) -> str:
    """Sum a matrix gradient with batch dims ``batch`` back to the shape of operand ``x``."""
    sx = ctx.shape(x)
    if len(sx) < 2:  # vector operand: no batch dims of its own; the lifted axis has size 1
        r = ctx.reduce("ReduceSum", grad, list(range(len(batch))), keepdims=False) if batch else grad
        return ctx.reshape_like(r, x)
    xb = sx[:-2]
    lead = len(batch) - len(xb)
    axes = list(range(lead))
    for i, (dx, db) in enumerate(zip(xb, batch[lead:])):
        if (dx == db and dx is not None) or (isinstance(dx, int) and dx != 1):
            continue
        if dx == 1:
            if db != 1:
                axes.append(lead + i)
            continue
        return _runtime_sum_to(ctx, grad, x)
    if not axes:
        return grad
    r = ctx.reduce("ReduceSum", grad, axes, keepdims=True)
    return ctx.reshape_like(r, x)


def _runtime_sum_to(ctx, grad: str, x: str) -> str:
    gshape = ctx.emit("Shape", [grad])
    xshape = ctx.shape_of(x)
    lead = ctx.emit("Sub", [ctx.emit("Shape", [gshape]), ctx.emit("Shape", [xshape])])
    ones = ctx.emit("ConstantOfShape", [lead], value=numpy_helper.from_array(np.ones(1, np.int64), "value"))
    padded = ctx.emit("Concat", [ones, xshape], axis=0)
    neq = ctx.emit("Not", [ctx.emit("Equal", [padded, gshape])])
    axes = ctx.emit("Reshape", [ctx.emit("NonZero", [neq]), ctx.ints([-1])])
    r = ctx.emit("ReduceSum", [grad, axes], keepdims=1, noop_with_empty_axes=1)
    return ctx.emit("Reshape", [r, xshape])
