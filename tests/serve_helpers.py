"""A real uvicorn server for the explorer's tests: started on 127.0.0.1 on a free port in a thread, stopped
at the end; and the real ImageNet model the browser test drives."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator

import uvicorn
from conftest import IMAGENET_LABELS, real


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def mobilenet():
    import blackbox

    return blackbox.load(real("models", "mobilenetv2-12-int8.onnx"), preprocess="imagenet", labels=IMAGENET_LABELS,
                         device="cpu")


@contextlib.contextmanager
def running_server(app, timeout: float = 30.0) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL. The app's explorer is closed afterwards."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the test server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        app.state.explorer.close()
