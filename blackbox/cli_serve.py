"""``blackbox serve``: the live explorer (filled in by the serve work; registered by :mod:`blackbox.cli`)."""

from __future__ import annotations

import argparse
from typing import Callable

HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {}


def add_parsers(sub) -> None:
    """Add the ``serve`` sub-command to ``blackbox``'s sub-parsers."""
