"""blackbox: explain the decisions of any ONNX image classifier, with nothing but ONNX Runtime underneath."""

from .api import explain
from .errors import BlackboxError
from .explanation import Explanation
from .many import explain_many
from .methods import METHODS
from .model import Model, load
from .preprocess import PRESETS, Preprocess

__all__ = ["load", "explain", "explain_many", "Model", "Explanation", "Preprocess", "PRESETS", "METHODS", "BlackboxError"]
__version__ = "0.1.0"
