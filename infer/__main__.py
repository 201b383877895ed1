"""python -m infer {generate, chat, serve, bench, bench-attention, check-attention, agent,
agent-eval, agent-data}

Thin: parses flags with tyro and calls the command bodies in this package. Every command that
runs the engine takes the same model and engine flags (`infer.flags`), flat, with vLLM's names.
"""

from __future__ import annotations

import sys
from typing import Any, Callable

import tyro


def commands() -> dict[str, tuple[type, Callable[[Any], Any]]]:
    """Each command's name -> (its flags dataclass, the function that runs it)."""
    from infer.agent import (
        AgentArgs,
        AgentDataArgs,
        AgentEvalArgs,
        run_agent,
        run_agent_data,
        run_agent_eval,
    )
    from infer.bench import BenchArgs, run_bench
    from infer.bench_attention import BenchAttentionArgs, run_bench_attention
    from infer.check_attention import CheckAttentionArgs, run_check_attention
    from infer.generate import ChatArgs, GenerateArgs, run_chat, run_generate
    from infer.serve import ServeArgs, run_serve

    return {
        "generate": (GenerateArgs, run_generate),
        "chat": (ChatArgs, run_chat),
        "serve": (ServeArgs, run_serve),
        "bench": (BenchArgs, run_bench),
        "bench-attention": (BenchAttentionArgs, run_bench_attention),
        "check-attention": (CheckAttentionArgs, run_check_attention),
        "agent": (AgentArgs, run_agent),
        "agent-eval": (AgentEvalArgs, run_agent_eval),
        "agent-data": (AgentDataArgs, run_agent_data),
    }


def main(argv: list[str] | None = None) -> None:
    from infer.serve import ServeArgs

    table = commands()
    runners = dict(table.values())
    args = tyro.extras.subcommand_cli_from_dict(
        {name: flags for name, (flags, _) in table.items()},
        args=argv,
        config=(tyro.conf.OmitArgPrefixes,),
    )
    if isinstance(args, ServeArgs):
        try:
            import fastapi  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as e:
            raise SystemExit(
                f"`serve` needs the serve extra: pip install -e '.[serve]' ({e})"
            ) from None
    runners[type(args)](args)


if __name__ == "__main__":
    main(sys.argv[1:])
