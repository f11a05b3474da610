"""ONNX Runtime plumbing: which provider really works, sessions, batch sizes, back-off on OOM.

Everything device-specific lives here so that methods only ever see NumPy arrays.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnx

from .errors import ModelError, NumericalError, ParameterError

# Import quietly: ORT prints provider warnings at import and session creation on CPU-only machines, and
# its own error lines before raising; blackbox reports every failure itself, in one line.
os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
import onnxruntime as ort  # noqa: E402

ort.set_default_logger_severity(4)

_OOM = re.compile(r"(out of memory|failed to allocate|bad_alloc|cudaErrorMemoryAllocation)", re.I)


@dataclass(frozen=True)
class Device:
    """The provider a session runs on, as resolved from the user's ``device`` string."""

    kind: str  # "cpu" or "cuda"
    index: int = 0

    @property
    def providers(self) -> list:
        if self.kind == "cuda":
            return [("CUDAExecutionProvider", {"device_id": self.index}), "CPUExecutionProvider"]
        return ["CPUExecutionProvider"]

    def __str__(self) -> str:
        return "CPUExecutionProvider" if self.kind == "cpu" else f"CUDAExecutionProvider (device {self.index})"


def _tiny_model() -> bytes:
    from onnx import TensorProto, helper

    from .graph.onnx_utils import OWN_IR_VERSION

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = OWN_IR_VERSION
    return model.SerializeToString()


@functools.lru_cache(maxsize=None)
def cuda_works(index: int = 0) -> bool:
    """True only when a CUDA session really initialises (the GPU wheel lists CUDA even without a GPU)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return False
    try:  # a failed CUDA load logs at ERROR level, which the quiet default logger keeps off stderr
        sess = ort.InferenceSession(_tiny_model(), _session_options(), providers=Device("cuda", index).providers)
        return "CUDAExecutionProvider" in sess.get_providers()
    except Exception:  # noqa: BLE001 - any failure means "no CUDA here"
        return False


def resolve_device(device: str | None) -> Device:
    """'auto' -> CUDA when it really works, else CPU; 'cpu'; 'cuda'; 'cuda:1'."""
    text = (device or "auto").strip().lower()
    if text == "auto":
        return Device("cuda", 0) if cuda_works(0) else Device("cpu")
    if text == "cpu":
        return Device("cpu")
    match = re.fullmatch(r"(cuda|gpu)(?::(\d+))?", text)
    if match:
        index = int(match.group(2) or 0)
        if not cuda_works(index):
            raise ParameterError(f"device {device!r}: CUDA is not usable here (no GPU, driver or CUDA libraries); "
                                 "use --device cpu or auto")
        return Device("cuda", index)
    raise ParameterError(f"unknown device {device!r}: use auto, cpu, cuda or cuda:N")


_THREADS: int | None = None


def set_threads(threads: int | None) -> None:
    """Intra-op threads for sessions created from now on (None: ONNX Runtime's default, all cores).
    One thread with spinning off makes CPU time a stable measure on a busy machine (benchmarks)."""
    global _THREADS
    _THREADS = threads


_BLAS = None  # threadpoolctl's controller of the BLAS libraries loaded when it was made


@contextlib.contextmanager
def numpy_on_one_thread():
    """numpy's BLAS on one thread while a method runs. ONNX Runtime's intra-op threads already use every
    core and spin for a while after each run, so a multi-threaded BLAS call between two session runs
    (integrated gradients' weighted sums, RISE's mask sums, a surrogate fit) fights them for the cores:
    integrated gradients on two cores took twice as long with OpenBLAS on two threads."""
    global _BLAS
    if _BLAS is None:  # finding the loaded BLAS libraries takes about a millisecond: once per process
        from threadpoolctl import ThreadpoolController  # scikit-learn's own dependency

        _BLAS = ThreadpoolController()
    with _BLAS.limit(limits=1, user_api="blas"):
        yield


def _session_options() -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.log_severity_level = 4  # failures reach the user as exceptions, in one line; no log spam
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # int8 models: x86 CPUs without VNNI (AVX2, AVX-512F) sum u8 x s8 products in pairs into saturating
    # int16 registers, so ONNX Runtime's int8 convolutions and matmuls drift from the model's integer
    # arithmetic (MobileNetV2-int8 logits by up to 4.3, top-1 changed; 1.8 with this entry, as on VNNI
    # CPUs). The entry widens those products where it matters; a no-op elsewhere, and on MobileNetV2-int8
    # on a 2-core AMD EPYC without VNNI it cost 1.5% (6.53 -> 6.63 ms per image at batch 32).
    options.add_session_config_entry("session.x64quantprecision", "1")
    if _THREADS:
        options.intra_op_num_threads = _THREADS
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model: onnx.ModelProto, device: Device) -> ort.InferenceSession:
    """A session for ``model``; ONNX Runtime's refusal (an op it lacks, a type mismatch, a bad attribute)
    becomes one line naming the cause, with ONNX Runtime's own log kept off stderr."""
    try:
        return ort.InferenceSession(model.SerializeToString(), _session_options(), providers=device.providers)
    except Exception as error:  # noqa: BLE001 - ORT raises Fail, InvalidGraph, NotImplemented, RuntimeException
        if is_out_of_memory(error):
            raise
        raise ModelError(f"onnxruntime cannot load the model: {describe_error(error)}") from None


def describe_error(error: BaseException) -> str:
    """ONNX Runtime's message in one short line: without its "[ONNXRuntimeError] : 1 : FAIL :" prefix
    and the C++ source location and signature it quotes."""
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"/?\S*onnxruntime_src/\S*:\d+ (\S+ )*?\S+\(.*?\) ", "", text)
    text = re.sub(r"\s+Status Message:\s*", ": ", text)
    return text[:300]


def check_finite(values: np.ndarray, what: str) -> np.ndarray:
    """Scores that are NaN or infinite are the model's answer to bad input, not numbers to explain."""
    if not np.all(np.isfinite(values)):
        rows = int(np.sum(~np.all(np.isfinite(values.reshape(len(values), -1)), axis=1)))
        raise NumericalError(f"the model returned NaN or infinite scores for {rows} of {len(values)} {what}; "
                             "check the preprocessing (--preset) and the model")
    return values


def is_out_of_memory(error: BaseException) -> bool:
    return bool(_OOM.search(str(error)))


class Runner:
    """Runs one session over many samples in batches, halving the batch on allocation failure.

    ``fixed`` inputs (image, baseline, targets, matrices shared by all samples) are bound once per
    call; ``batched`` inputs are split along axis 0. On CUDA the fixed inputs live on the device.
    """

    def __init__(self, session: ort.InferenceSession, device: Device, batch_size: int,
                 output: str | Sequence[str]):
        self.session = session
        self.device = device
        self.batch_size = max(1, int(batch_size))
        self.output = output
        self.outputs = [output] if isinstance(output, str) else list(output)

    def run(self, fixed: dict[str, np.ndarray], batched: dict[str, np.ndarray],
            progress: Callable[[int], None] | None = None) -> np.ndarray | list[np.ndarray]:
        """Outputs for all samples: one array (one output named) or a list (several), batch-concatenated."""
        n = len(next(iter(batched.values())))
        binding = self.session.io_binding()
        device_type = "cuda" if self.device.kind == "cuda" else "cpu"

        def bind(name: str, array: np.ndarray) -> None:
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), device_type, self.device.index)
            binding.bind_ortvalue_input(name, value)

        for name, array in fixed.items():
            bind(name, array)
        results = []
        start = 0
        while start < n:
            stop = min(n, start + self.batch_size)
            try:
                for name, array in batched.items():
                    bind(name, array[start:stop])
                for name in self.outputs:
                    binding.bind_output(name, "cpu")
                self.session.run_with_iobinding(binding)
                results.append(binding.copy_outputs_to_cpu())
            except Exception as error:  # noqa: BLE001
                if is_out_of_memory(error) and self.batch_size > 1:
                    self.batch_size //= 2
                    continue
                raise
            if progress is not None:
                progress(stop - start)
            start = stop
        if not results:
            return np.zeros((0,), np.float32) if isinstance(self.output, str) else []
        merged = [np.concatenate([r[i] for r in results], axis=0) for i in range(len(self.outputs))]
        return merged[0] if isinstance(self.output, str) else merged
