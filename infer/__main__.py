"""python -m infer {generate, chat, serve, bench, bench-attention}

Thin: parses flags with tyro and calls library functions.
"""

from __future__ import annotations

import sys

import tyro


def main(argv: list[str] | None = None) -> None:
    from autoglm_jax.engine.commands import ChatArgs, GenerateArgs, run_chat, run_generate
    from autoglm_jax.kernels.bench import BenchAttentionArgs, run_bench_attention

    commands: dict[str, type] = {"generate": GenerateArgs, "chat": ChatArgs,
                                 "bench-attention": BenchAttentionArgs}
    runners = {GenerateArgs: run_generate, ChatArgs: run_chat,
               BenchAttentionArgs: run_bench_attention}
    try:
        from autoglm_jax.engine.bench import BenchArgs, run_bench
        commands["bench"] = BenchArgs
        runners[BenchArgs] = run_bench
    except ImportError:
        pass
    try:
        from autoglm_jax.serve.config import ServeConfig
        from autoglm_jax.serve.server import run_server
        commands["serve"] = ServeConfig
        runners[ServeConfig] = run_server
    except ImportError as e:  # the `serve` extra is not installed
        if argv is None and len(sys.argv) > 1 and sys.argv[1] == "serve":
            raise SystemExit(f"`serve` needs the serve extra: pip install -e '.[serve]' ({e})")
    # Flat flags, as vLLM users expect: --model, --max-model-len, --temperature.
    args = tyro.extras.subcommand_cli_from_dict(commands, args=argv,
                                                config=(tyro.conf.OmitArgPrefixes,))
    runners[type(args)](args)


if __name__ == "__main__":
    main()
