"""The Ray engine: the report's records computed by actors on a Ray cluster.

``blackbox report ... --engine ray [--address HOST:PORT] [--workers N] [--gpus-per-worker G]``

- Without ``--address`` a local Ray instance is started (bound to 127.0.0.1, no dashboard) and shut down
  at the end; with it, the run connects to that cluster. A run that finds Ray already initialised in its
  process (a notebook, a test) uses that connection and leaves it open.
- N actors (default: one per CPU of the cluster, or one per ``G`` GPUs), each holding one loaded Model:
  the driver's graph and its every resolved choice (preprocessing, labels, names, output kind, layout),
  one ONNX Runtime session with the actor's share of the CPUs as threads; on a GPU worker
  (``--gpus-per-worker`` > 0) the CUDA provider, else the CPU.
- The work is the image list, cut in small units of images handed out from a queue, two in flight per
  actor. Each actor runs :func:`blackbox.report.engines.local.process` on its unit, the same code as the
  local engine, so the numbers are the same record for record. Records and their files are written
  atomically under fixed names into the output folder when the actors see it (a shared file system,
  checked with a token file); else they come back to the driver, which writes them.
- A worker that dies (killed, out of memory, its node lost) costs only its in-flight units: the driver
  starts a replacement actor and hands them out again. Rewriting a record is idempotent; a unit that kills
  its worker three times is recorded as failed, and the run goes on.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import tempfile
import uuid
from collections import deque
from pathlib import Path
from typing import Any, Callable, Sequence

from ...errors import ParameterError
from . import WorkItem

INSTALL = 'the ray engine needs Ray: pip install "blackbox-explain[ray]"'
MAX_ATTEMPTS = 3  # a unit whose worker died this many times is recorded as failed
IN_FLIGHT = 2  # units queued per actor, so it never waits for the driver between units
TOKEN_PREFIX = ".blackbox-engine-"

# called with [{"actor": handle, "pid": int, "node": str}, ...] once the actors are up (observability;
# the tests use it to kill a worker mid-run)
on_workers: Callable[[list[dict[str, Any]]], None] | None = None


def require() -> None:
    """ParameterError (one line: how to install it) when Ray cannot be imported."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise ParameterError(INSTALL) from None


def _loopback(address: str | None) -> bool:
    if address is None:
        return True
    host = address.split("://")[-1].rsplit(":", 1)[0].strip("[]").lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def _bind_to_loopback() -> None:
    """Ray resolves 127.0.0.1 to the machine's network address unless clustering is off; off, its
    processes (and this driver) bind to and advertise 127.0.0.1."""
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        from ray._private import ray_constants

        ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] not in ("0", "false", "False")
    except Exception:  # noqa: BLE001 - a Ray without that switch: its default binding
        pass


def _connect(config: Any) -> bool:
    """Connect (or start a local instance); True when this run owns the connection and shuts it down."""
    import ray

    if ray.is_initialized():
        return False
    if _loopback(config.address):
        _bind_to_loopback()
    try:
        if config.address is None:
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False,
                     logging_level=logging.WARNING, configure_logging=True)
        else:
            ray.init(address=config.address, log_to_driver=False, logging_level=logging.WARNING,
                     **({"_node_ip_address": "127.0.0.1"} if _loopback(config.address) else {}))
    except Exception as error:  # noqa: BLE001 - one line for the user
        text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        where = f"the Ray cluster at {config.address}" if config.address else "a local Ray instance"
        raise ParameterError(f"cannot connect to {where}: {text}") from None
    return True


def _model_recipe(model: Any, device: str) -> dict[str, Any]:
    """What an actor needs to load the driver's model with every choice the driver resolved."""
    d = model.description
    return {"proto": model.proto.SerializeToString(),
            "options": {"preprocess": d.preprocess, "labels": list(d.labels.names) if d.labels else None,
                        "input_name": d.image.name, "output_name": d.output.name, "output_kind": d.output.kind,
                        "layout": d.layout, "inputs": dict(d.constants) or None,
                        "batch_size": model.options.batch_size, "device": device}}


def _worker_device(model: Any, gpus: float) -> str:
    asked = str(getattr(model.options, "device", "auto") or "auto")
    if gpus > 0:
        return "cuda" if asked.startswith("cuda") else asked  # Ray shows the actor only its own GPUs
    if asked.startswith("cuda"):
        raise ParameterError(f"--device {asked} with --engine ray needs GPUs for the workers: add "
                             "--gpus-per-worker (e.g. 1)")
    return "cpu"  # auto without GPUs reserved: never share an unreserved GPU between actors


class ReportWorker:
    """One actor: one loaded Model; computes units of work items (made a Ray actor in :func:`run`)."""

    def __init__(self, recipe: dict[str, Any], config: Any, out: str, token: str, threads: int) -> None:
        import onnx

        from ... import runtime
        from ...model import load

        runtime.set_threads(threads)
        self.model = load(onnx.load_from_string(recipe["proto"]), **recipe["options"])
        self.config = config
        self.out = Path(out)
        try:
            self.shared = (self.out / token).read_text(encoding="ascii").strip() == token
        except OSError:
            self.shared = False

    def ready(self) -> dict[str, Any]:
        import socket

        return {"pid": os.getpid(), "node": socket.gethostname(), "shared": self.shared}

    def run(self, items: list[WorkItem]) -> list[tuple[dict[str, Any], dict[str, bytes]]]:
        """(record, files) per record of ``items``; files ({path under OUT: bytes}) only when the actor
        does not see the output folder and wrote into a scratch folder instead."""
        from .local import process

        if self.shared:
            return [(record, {}) for record in process(self.model, items, self.config, self.out)]
        scratch = Path(tempfile.mkdtemp(prefix="blackbox-ray-"))
        try:
            results = []
            for record in process(self.model, items, self.config, scratch):
                rels = [*(record.get("files") or {}).values(), _json_rel(record)]
                results.append((record, {rel: (scratch / rel).read_bytes() for rel in rels}))
            return results
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def _json_rel(record: dict[str, Any]) -> str:
    from ..run import record_stem_of

    return f"items/{record['key']}/{record_stem_of(record)}.json"


def _units(work: Sequence[WorkItem], workers: int) -> list[list[WorkItem]]:
    """Small units (a few images) so that work spreads evenly and a lost worker costs little, big enough
    to batch explanations across images."""
    size = max(1, min(16, math.ceil(len(work) / (workers * 4))))
    return [list(work[i:i + size]) for i in range(0, len(work), size)]


def _failed(unit: list[WorkItem], why: str) -> list[dict[str, Any]]:
    return [{"image": item.entry.path, "key": item.entry.key, "method": job.method,
             "slot": job.slot.name if job.several else None, "stem": job.stem, "config_hash": job.digest,
             "status": "failed", "error": why} for item in unit for job in item.jobs]


def run(model: Any, work: Sequence[WorkItem], config: Any, out: Path,
        on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    import ray

    from ...files import remove_stale_temporaries, write_atomic
    from ..run import _dumps, write_text_atomic

    gpus = float(config.gpus_per_worker or 0)
    if gpus < 0:
        raise ParameterError("--gpus-per-worker must be >= 0")
    device = _worker_device(model, gpus)
    recipe = _model_recipe(model, device)
    owned = _connect(config)
    out = Path(out)
    token = f"{TOKEN_PREFIX}{uuid.uuid4().hex}"
    actors: dict[int, Any] = {}
    try:
        write_text_atomic(out / token, token)
        resources = ray.cluster_resources()
        cpus = float(resources.get("CPU", 1) or 1)
        if config.workers is not None:
            workers = int(config.workers)
        elif gpus > 0:
            workers = max(1, int(float(resources.get("GPU", 0)) // gpus))
        else:
            workers = max(1, int(cpus))
        if gpus > 0 and float(resources.get("GPU", 0)) < gpus:
            raise ParameterError(f"--gpus-per-worker {gpus:g}: the Ray cluster has "
                                 f"{float(resources.get('GPU', 0)):g} GPUs")
        workers = max(1, min(workers, sum(len(w.jobs) for w in work)))
        share = cpus / workers
        num_cpus = max(1.0, math.floor(share)) if share >= 1 else round(share, 4)
        threads = max(1, int(num_cpus))
        actor_class = ray.remote(ReportWorker)
        recipe_ref = ray.put(recipe)
        config_ref = ray.put(config)
        serial = [0]

        def start() -> int:
            serial[0] += 1
            actors[serial[0]] = actor_class.options(num_cpus=num_cpus, num_gpus=gpus, max_restarts=0).remote(
                recipe_ref, config_ref, str(out.resolve()), token, threads)
            return serial[0]

        for _ in range(workers):
            start()
        try:
            infos = ray.get([actors[i].ready.remote() for i in list(actors)])
        except ray.exceptions.RayError as error:  # the model does not load on a worker
            lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
            raise ParameterError(f"a Ray worker could not load the model: "
                                 f"{lines[-1] if lines else type(error).__name__}") from None
        if on_workers is not None:
            on_workers([{"actor": actors[i], **info} for i, info in zip(list(actors), infos)])

        queue = deque((unit, 0) for unit in _units(work, workers))
        flight: dict[Any, tuple[int, list[WorkItem], int]] = {}
        load = {i: 0 for i in actors}
        replaced = retried = 0

        def deliver(records: list[tuple[dict[str, Any], dict[str, bytes]]]) -> None:
            for record, files in records:
                if files:  # the actor did not see OUT: write its files here, the record last
                    json_rel = _json_rel(record)
                    for rel, data in files.items():
                        if rel != json_rel:
                            (out / rel).parent.mkdir(parents=True, exist_ok=True)
                            write_atomic(out / rel, data, error=ParameterError)
                    (out / json_rel).parent.mkdir(parents=True, exist_ok=True)
                    write_atomic(out / json_rel, files[json_rel], error=ParameterError)
                if on_record is not None:
                    on_record(record)

        while queue or flight:
            for i in list(actors):
                while queue and load[i] < IN_FLIGHT:
                    unit, attempts = queue.popleft()
                    flight[actors[i].run.remote(unit)] = (i, unit, attempts)
                    load[i] += 1
            if not flight:
                break
            done, _ = ray.wait(list(flight), num_returns=1)
            for ref in done:
                i, unit, attempts = flight.pop(ref)
                load[i] = load.get(i, 1) - 1
                try:
                    deliver(ray.get(ref))
                except ray.exceptions.RayTaskError as error:  # an error outside any one item: as locally
                    raise error.as_instanceof_cause() from None
                except ray.exceptions.RayError as error:  # the worker died: hand its units out again
                    lost = sum(len(item.jobs) for item in unit)
                    if i in actors:
                        sys.stderr.write(f"blackbox: note: a Ray worker was lost ({type(error).__name__}); "
                                         "retrying its unfinished items on a new worker\n")
                        try:
                            ray.kill(actors.pop(i))
                        except Exception:  # noqa: BLE001 - already gone
                            pass
                        load.pop(i, None)
                        if replaced < 2 * workers + 2:
                            replaced += 1
                            load[start()] = 0
                    if attempts + 1 >= MAX_ATTEMPTS or not actors:
                        records = _failed(unit, f"its Ray worker died {attempts + 1} times "
                                                f"({type(error).__name__})")
                        for record in records:
                            write_text_atomic(out / _json_rel(record), _dumps(record))
                        deliver([(r, {}) for r in records])
                    else:
                        retried += lost
                        queue.appendleft((unit, attempts + 1))
        return {"workers": workers, "cpus_per_worker": num_cpus, "gpus_per_worker": gpus,
                "replaced_workers": replaced, "retried": retried,
                "address": config.address or "local instance"}
    finally:
        for actor in actors.values():
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001
                pass
        if owned:
            ray.shutdown()
        try:
            (out / token).unlink()
        except OSError:
            pass
        remove_stale_temporaries(out)  # a killed worker's half-written temporaries (its process is gone)
