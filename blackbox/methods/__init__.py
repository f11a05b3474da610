"""The method registry. Each method is one module here that registers a function by name.

A method function takes a :class:`~blackbox.methods.base.Context` plus its own keyword-only parameters and
returns a :class:`~blackbox.methods.base.Result`. Importing this package imports every method module so
that ``METHODS`` is complete.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import METHODS, Context, MethodSpec, Result, batched, register

__all__ = ["METHODS", "Context", "MethodSpec", "Result", "batched", "register"]

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base" and not _info.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_info.name}")
