"""Running the app under uvicorn, with the SageMaker container's shutdown contract.

On SIGTERM uvicorn stops accepting connections, lets requests in flight finish (at most
:data:`GRACEFUL_SECONDS`), then the app's lifespan drains the batcher and flushes the capture
store: the process is gone well within SageMaker's 30 s.
"""

from __future__ import annotations

import errno
import logging
import os
import socket

from fastapi import FastAPI

from medops.errors import ConfigError

GRACEFUL_SECONDS = 20
#: ``serve.workers: null`` means one worker per core, up to this many: past it, batches get
#: too small to pay for themselves and threads per forward pass serve latency better.
MAX_AUTO_WORKERS = 4


def _cores() -> int:
    """The cores this process may run on (a container's CPU set, not the host's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def forward_workers(configured: int | None) -> int:
    """How many forward passes run at once: ``serve.workers``, else one per core (capped)."""
    return configured or min(_cores(), MAX_AUTO_WORKERS)


def share_cores(workers: int) -> int:
    """Give each of ``workers`` concurrent forward passes its share of the cores as torch
    threads (a process-wide setting, so only a serving process calls this). Returns it."""
    import torch

    threads = max(1, _cores() // workers)
    torch.set_num_threads(threads)
    return threads


def check_bindable(host: str, port: int) -> None:
    """A ConfigError with the fix when ``host:port`` cannot be listened on (uvicorn would log
    its own text and exit after the model had loaded)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with socket.socket(infos[0][0], socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
            s.bind(infos[0][4])
    except OSError as exc:
        fix = ("pick another port with --port (or serve.port)" if exc.errno == errno.EADDRINUSE
               else "check --host (or serve.host): an address of this machine, or 0.0.0.0")
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; {fix}") from exc


def run_server(app: FastAPI, host: str, port: int, log_level: str = "info",
               access_log: bool = False) -> None:
    """Serve ``app`` until SIGTERM or SIGINT (blocking)."""
    import uvicorn

    check_bindable(host, port)

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=GRACEFUL_SECONDS,
                            # SageMaker's load balancer keeps connections open for 60 s
                            timeout_keep_alive=75, lifespan="on")
    uvicorn.Server(config).run()
