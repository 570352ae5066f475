"""Running the app under uvicorn, with the SageMaker container's shutdown contract.

On SIGTERM uvicorn stops accepting connections, lets requests in flight finish (at most
:data:`GRACEFUL_SECONDS`), then the app's lifespan drains the batcher and flushes the capture
store: the process is gone well within SageMaker's 30 s.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI

GRACEFUL_SECONDS = 20


def run_server(app: FastAPI, host: str, port: int, log_level: str = "info",
               access_log: bool = False) -> None:
    """Serve ``app`` until SIGTERM or SIGINT (blocking)."""
    import uvicorn

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: "
                        "%(message)s")
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=access_log, timeout_graceful_shutdown=GRACEFUL_SECONDS,
                            # SageMaker's load balancer keeps connections open for 60 s
                            timeout_keep_alive=75, lifespan="on")
    uvicorn.Server(config).run()
