"""`run_server(ServeConfig)`: load the model, build the engine, serve it with uvicorn.

    python -m infer serve --model PATH [--port 8000 ...]     # the CLI (tyro over ServeConfig)
    python -m autoglm_jax.serve.server --model tiny            # the same, without the infer CLI

`--model tiny` (text) or `--model tiny-mm` (AutoGLM with vision and audio) serves that preset
with RANDOM weights and the shipped tiny tokenizer: a smoke run of the whole stack, whose text
is noise. SIGINT/SIGTERM shut down gracefully: no new
connections, running requests get `--shutdown-timeout` seconds to finish, the rest are aborted,
then the engine thread stops.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading

import fastapi  # noqa: F401 - the `serve` extra; an ImportError here tells the CLI it is missing
import uvicorn

from autoglm_jax.serve.config import ServeConfig

log = logging.getLogger("autoglm_jax.serve")

RANDOM_PRESETS = ("tiny", "tiny-mm")  # served with random weights and the tiny tokenizer
DEFAULT_MAX_MODEL_LEN = 8192


def _setup_logging(level: str) -> None:
    logger = logging.getLogger("autoglm_jax")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if level in ("debug", "trace") else logging.INFO)


def build_engine(config: ServeConfig):
    """The model (loaded, or `tiny` with random weights) and an Engine over it."""
    import jax

    import autoglm_jax as ag
    from autoglm_jax.engine import Engine, EngineConfig

    if config.compilation_cache_dir:
        jax.config.update("jax_compilation_cache_dir", config.compilation_cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    mesh = (ag.make_mesh(tensor=config.tensor_parallel_size)
            if config.tensor_parallel_size > 1 else None)
    dtype = config.dtype
    if dtype == "auto":
        dtype = "float32" if jax.default_backend() == "cpu" else "bfloat16"
    if config.model in RANDOM_PRESETS and not os.path.isdir(config.model):
        from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
        model = ag.init(config.model, seed=config.seed, dtype=dtype, mesh=mesh,
                        tokenizer=Tokenizer.from_dir(TINY_TOKENIZER_DIR))
        banner = (f"SMOKE RUN: --model {config.model} serves that preset with RANDOM weights; "
                  "its text is noise. Pass a checkpoint directory to serve a real model.")
        print("=" * len(banner), banner, "=" * len(banner), sep="\n", file=sys.stderr,
              flush=True)
    else:
        model = ag.load(config.model, dtype=dtype, mesh=mesh)
    if model.tokenizer is None:
        raise SystemExit(f"{config.model}: no tokenizer (tokenizer.json) next to the weights; "
                         "the server needs one to render chats and decode text")
    max_model_len = config.max_model_len or min(model.config.text.max_position_embeddings,
                                                DEFAULT_MAX_MODEL_LEN)
    engine_config = EngineConfig(
        max_num_seqs=config.max_num_seqs, max_num_batched_tokens=config.max_num_batched_tokens,
        page_size=config.block_size, max_model_len=max_model_len,
        enable_prefix_caching=config.enable_prefix_caching,
        enable_chunked_prefill=config.enable_chunked_prefill,
        kv_cache_dtype=config.kv_cache_dtype, num_pages=config.num_gpu_blocks_override,
        kv_cache_memory_bytes=config.kv_cache_memory_bytes,
        attention_backend=config.attention_backend, scheduling_policy=config.scheduling_policy,
        max_waiting_requests=config.max_waiting_requests, max_queue_wait=config.max_queue_wait,
        max_logprobs=config.max_logprobs, seed=config.seed)
    try:
        engine_config.validate()
    except ValueError as e:
        raise SystemExit(f"engine settings: {e}") from None
    return Engine(model, engine_config, mesh=mesh)


def run_server(config: ServeConfig) -> None:
    """Serve until SIGINT/SIGTERM."""
    _setup_logging(config.uvicorn_log_level)
    try:
        config.validate()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    from autoglm_jax.serve.app import create_app
    engine = build_engine(config)
    s = engine.stats()
    log.info("engine: %s attention, %d KV pages of %d tokens, max_model_len %d, "
             "max_num_seqs %d", s["attention_backend"], s["num_pages"], config.block_size,
             engine.config.max_model_len, config.max_num_seqs)
    app = create_app(engine, config)
    if config.api_key is None and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without --api-key: anyone who can reach it can use it",
                    config.host)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.uvicorn_log_level,
        timeout_graceful_shutdown=config.shutdown_timeout, access_log=True))
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


def main(argv: list[str] | None = None) -> None:
    import tyro
    run_server(tyro.cli(ServeConfig, args=argv))


__all__ = ["ServeConfig", "build_engine", "main", "run_server"]

if __name__ == "__main__":
    main()
