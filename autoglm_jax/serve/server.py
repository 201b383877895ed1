"""`run_server(engine, ServeConfig)`: serve an Engine with uvicorn (`python -m infer serve`
builds the engine from its flags and calls this).

SIGINT/SIGTERM shut down gracefully: no new connections, running requests get
`--shutdown-timeout` seconds to finish, the rest are aborted, then the engine thread stops.
"""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import fastapi  # noqa: F401 - the `serve` extra; an ImportError here tells the CLI it is missing
import uvicorn

from autoglm_jax.serve.config import ServeConfig

log = logging.getLogger("autoglm_jax.serve")


def setup_logging(level: str) -> None:
    logger = logging.getLogger("autoglm_jax")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level in ("debug", "trace") else logging.INFO)


def run_server(engine: Any, config: ServeConfig) -> None:
    """Serve `engine` until SIGINT/SIGTERM."""
    setup_logging(config.uvicorn_log_level)
    try:
        config.validate()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from autoglm_jax.serve.app import create_app

    s = engine.stats()
    log.info(
        "engine: %s attention, %d KV pages of %d tokens, max_model_len %d, max_num_seqs %d",
        s["attention_backend"],
        s["num_pages"],
        engine.config.page_size,
        engine.config.max_model_len,
        engine.config.max_num_seqs,
    )
    app = create_app(engine, config)
    if config.api_key is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning(
            "serving on %s without --api-key: anyone who can reach it can use it", config.host
        )
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.uvicorn_log_level,
            timeout_graceful_shutdown=config.shutdown_timeout,
            access_log=True,
        )
    )
    received = _absorb_resent_signals()
    server.run()  # uvicorn handles SIGINT/SIGTERM; the app's lifespan stops the engine thread
    if server.started is False and not received:
        raise SystemExit(1)  # could not bind (uvicorn logged why)
    log.info("server stopped%s", f" ({signal.Signals(received[0]).name})" if received else "")


def _absorb_resent_signals() -> list[int]:
    """uvicorn re-raises the SIGINT/SIGTERM it shut down for once it is done, under the handlers
    that were there before it; make those record the signal, so a graceful stop exits 0
    instead of dying of SIGTERM or printing a KeyboardInterrupt traceback."""
    received: list[int] = []
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda s, _frame: received.append(s))
    return received


__all__ = ["ServeConfig", "run_server", "setup_logging"]
