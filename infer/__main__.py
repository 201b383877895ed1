"""python -m infer {generate, chat, serve, bench, bench-attention, check-attention, agent,
agent-eval, agent-data}

Thin: parses flags with tyro and calls the command bodies in this package. Every command that
runs the engine takes the same model and engine flags (`infer.flags`), flat, with vLLM's names.
"""

from __future__ import annotations

import sys

import tyro


def main(argv: list[str] | None = None) -> None:
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

    commands: dict[str, type] = {
        "generate": GenerateArgs,
        "chat": ChatArgs,
        "serve": ServeArgs,
        "bench": BenchArgs,
        "bench-attention": BenchAttentionArgs,
        "check-attention": CheckAttentionArgs,
        "agent": AgentArgs,
        "agent-eval": AgentEvalArgs,
        "agent-data": AgentDataArgs,
    }
    runners = {
        GenerateArgs: run_generate,
        ChatArgs: run_chat,
        ServeArgs: run_serve,
        BenchArgs: run_bench,
        BenchAttentionArgs: run_bench_attention,
        CheckAttentionArgs: run_check_attention,
        AgentArgs: run_agent,
        AgentEvalArgs: run_agent_eval,
        AgentDataArgs: run_agent_data,
    }
    args = tyro.extras.subcommand_cli_from_dict(
        commands, args=argv, config=(tyro.conf.OmitArgPrefixes,)
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
