"""`python -m infer serve`: the OpenAI-compatible server over an engine built from the shared
model and engine flags (the server's own flags are `ServeConfig`'s)."""

from __future__ import annotations

import dataclasses

from autoglm_jax.serve.config import ServeConfig
from infer.flags import EngineFlags, ModelFlags


@dataclasses.dataclass(frozen=True)
class ServeArgs:
    """OpenAI-compatible server (vLLM's flag names)."""

    model: ModelFlags = ModelFlags()
    engine: EngineFlags = EngineFlags()
    server: ServeConfig = ServeConfig()


def run_serve(args: ServeArgs) -> None:
    from autoglm_jax.serve.server import run_server, setup_logging
    from infer.flags import build_engine

    setup_logging(args.server.uvicorn_log_level)
    try:
        args.server.validate()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    engine = build_engine(args.model, args.engine)
    if engine.tokenizer is None:
        raise SystemExit(
            f"{args.model.model}: no tokenizer (tokenizer.json) next to the "
            "weights; the server needs one to render chats and decode text"
        )
    server = dataclasses.replace(
        args.server, served_model_name=args.server.served_model_name or args.model.model
    )
    run_server(engine, server)
