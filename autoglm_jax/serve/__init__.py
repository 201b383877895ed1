"""The OpenAI-compatible server (the `serve` extra: fastapi, uvicorn).

    from autoglm_jax.serve import ServeConfig, run_server
    run_server(ag.Engine(ag.load("path/to/checkpoint")), ServeConfig(port=8000))

`ServeConfig` imports nothing outside the standard library; the rest loads on first use, so
listing the CLI's flags does not need the extra installed.
"""

from __future__ import annotations

from typing import Any

from autoglm_jax.serve.config import ServeConfig

_LAZY = {
    "create_app": "autoglm_jax.serve.app",
    "EngineThread": "autoglm_jax.serve.engine_thread",
    "run_server": "autoglm_jax.serve.server",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'autoglm_jax.serve' has no attribute {name!r}")


__all__ = ["EngineThread", "ServeConfig", "create_app", "run_server"]
