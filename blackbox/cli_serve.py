"""``blackbox serve``: the live explorer in a browser (registered by :mod:`blackbox.cli`).

The model is loaded with the common model arguments; the port is tried before the server starts, so a
port in use is one error line (exit 2) rather than a uvicorn traceback."""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Callable

from .errors import BlackboxError, ParameterError

SERVE_EXTRA = 'pip install "blackbox-explain[serve]"'
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port number (0..65535)")
    return value


def add_parsers(sub) -> None:
    """Add the ``serve`` sub-command to ``blackbox``'s sub-parsers."""
    from .cli import _model_arguments, _positive_int, number_type

    megabytes = number_type(lambda v: 0 < v <= 4096, "between 0 and 4096 MB")

    serve = sub.add_parser("serve", help="a live explorer in the browser: top classes, explanations by any method, "
                                         "layer activations, units",
                           description="Serve a local web page to explore MODEL: open or drop a picture (or pick "
                                       "one from --images), click a class to explain it with any method, compare "
                                       "two methods, browse a layer's activations and click a unit for its top "
                                       "images and its activation-maximisation picture. Binds 127.0.0.1 unless "
                                       "--host says otherwise.")
    _model_arguments(serve)
    serve.add_argument("--images", metavar="DIR", help="folder of pictures to pick from and to rank units on")
    serve.add_argument("--port", type=_port, default=8765, help="port to listen on (default 8765)")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1: this computer only)")
    serve.add_argument("--max-upload-mb", type=megabytes, default=20.0,
                       help="largest upload accepted, in MB (default 20; pixel limits: BLACKBOX_MAX_IMAGE_PIXELS)")
    serve.add_argument("--am-steps", type=_positive_int, default=64,
                       help="activation maximisation steps for a unit's picture (default 64, for a quick answer; "
                            "the library's default is 256)")


def check_port(host: str, port: int) -> None:
    """Bind once and let go: a port in use or an address this machine lacks is a user error now."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise ParameterError(f"--host {host}: not an address of this machine ({error.strerror})") from None
    family, _, _, _, address = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            if error.errno == errno.EADDRINUSE:
                raise ParameterError(f"port {port} on {host} is in use; pass another with --port") from None
            raise ParameterError(f"cannot listen on {host}:{port} ({error.strerror or error})") from None


def cmd_serve(args: argparse.Namespace) -> int:
    import importlib.util

    for module, package in (("starlette", "starlette"), ("uvicorn", "uvicorn"), ("python_multipart", "python-multipart")):
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
            found = False
        if not found:
            raise BlackboxError(f"blackbox serve needs {package}: {SERVE_EXTRA}")
    from pathlib import Path

    import uvicorn

    from .cli import _load, _warnings
    from .text import printable

    if args.images is not None and not Path(args.images).is_dir():
        raise ParameterError(f"--images {args.images} is not a folder")
    check_port(args.host, args.port)
    model = _load(args)
    for text in dict.fromkeys(_warnings):  # shown now: the server runs until Ctrl+C
        print(f"blackbox: warning: {printable(text)}", file=sys.stderr)
    _warnings.clear()
    from .serve import create_app

    hosts = [args.host, *LOOPBACK] if args.host in LOOPBACK else None
    app = create_app(model, args.images, max_upload_bytes=int(args.max_upload_mb * (1 << 20)),
                     am_steps=args.am_steps, allowed_hosts=hosts)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"blackbox serve: {Path(args.model).name} at http://{shown}:{args.port}/  (Ctrl+C to stop)",
          file=sys.stderr, flush=True)
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    finally:
        app.state.explorer.close()
    return 0


HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {"serve": cmd_serve}
