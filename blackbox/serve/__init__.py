"""``blackbox serve``: a local web explorer of one ONNX classifier (open a picture, see its top classes,
explain any class with any method, compare methods, browse a layer's activations, look at a unit).

Needs the ``serve`` extra (starlette, uvicorn, python-multipart): ``pip install "blackbox-explain[serve]"``.
:func:`create_app` builds the Starlette app; :mod:`.jobs` is the one worker thread every computation runs
on; :mod:`.store` keeps uploads and guards file access; :mod:`.explorer` is what gets computed.
"""

from .app import create_app

__all__ = ["create_app"]
