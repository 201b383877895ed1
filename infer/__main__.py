"""python -m infer {generate, chat, serve, bench, bench-attention}

Thin: parses flags with tyro and calls the command bodies in this package. Every command that
runs the engine takes the same model and engine flags (`infer.flags`), flat, with vLLM's names.
"""

from __future__ import annotations

import sys

import tyro


def main(argv: list[str] | None = None) -> None:
    from infer.bench import BenchArgs, run_bench
    from infer.bench_attention import BenchAttentionArgs, run_bench_attention
    from infer.generate import ChatArgs, GenerateArgs, run_chat, run_generate
    from infer.serve import ServeArgs, run_serve

    commands: dict[str, type] = {
        "generate": GenerateArgs,
        "chat": ChatArgs,
        "serve": ServeArgs,
        "bench": BenchArgs,
        "bench-attention": BenchAttentionArgs,
    }
    runners = {
        GenerateArgs: run_generate,
        ChatArgs: run_chat,
        ServeArgs: run_serve,
        BenchArgs: run_bench,
        BenchAttentionArgs: run_bench_attention,
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
