"""Errors a user can fix. Each carries one line: what is wrong and what to do about it.

The CLI prints ``str(error)`` and exits 2; anything else escaping is a bug in blackbox.
"""


class BlackboxError(Exception):
    """Base class for mistakes in what the user gave us (files, parameters, targets)."""


class ModelError(BlackboxError):
    """The ONNX file cannot be used as an image classifier as it stands."""


class ImageError(BlackboxError):
    """An image cannot be read or does not fit the model."""


class ParameterError(BlackboxError):
    """A method or CLI parameter is out of range or unknown."""


class TargetError(BlackboxError):
    """The requested class index or label does not exist."""


class UnsupportedOpError(ModelError):
    """The gradient graph has no rule for an op; the model-agnostic methods still work."""


class NumericalError(BlackboxError):
    """The model produced NaN or infinite scores."""
