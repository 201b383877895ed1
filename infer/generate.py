"""`python -m infer generate` (offline batch) and `python -m infer chat` (interactive)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, TextIO

from autoglm_jax.engine import SamplingParams
from infer.flags import STDERR, STDIN, STDOUT, EngineFlags, ModelFlags, build_engine, warm_up
from infer.progress import Progress, print_table


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    max_tokens: int = 64
    """Tokens to generate per prompt."""
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    top_k: int = 0
    """0: disabled. (Each request's random seed comes from --seed, the engine's.)"""

    def params(self) -> SamplingParams:
        return SamplingParams(
            max_tokens=self.max_tokens,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
        )


@dataclasses.dataclass(frozen=True)
class GenerateArgs:
    """Generate completions for prompts given as arguments or in a JSONL file."""

    prompts: tuple[str, ...] = ("Hello, my name is",)
    """Prompts (plain text completion)."""
    prompts_file: Path | None = None
    """JSONL: each line a string, {"prompt": ...}, or {"messages": [...]} (chat)."""
    output: Path | None = None
    """Write results as JSONL here (default: print them)."""
    chat: bool = False
    """Wrap each text prompt as a user message and render the chat template."""
    model: ModelFlags = ModelFlags()
    engine: EngineFlags = EngineFlags()
    sampling: SamplingArgs = SamplingArgs()


@dataclasses.dataclass(frozen=True)
class ChatArgs:
    """Interactive chat, streamed token by token."""

    system: str | None = None
    """Optional system prompt."""
    image: tuple[Path, ...] = ()
    """Image files for the first turn (multimodal models)."""
    audio: tuple[Path, ...] = ()
    """WAV files for the first turn (models with an audio encoder)."""
    enable_thinking: bool = False
    """Let the model think (<think>...</think>) before answering."""
    model: ModelFlags = ModelFlags()
    engine: EngineFlags = EngineFlags()
    sampling: SamplingArgs = SamplingArgs(max_tokens=256)


def _read_prompts(args: GenerateArgs) -> list[Any]:
    prompts: list[Any] = []
    if args.prompts_file is not None:
        path = args.prompts_file
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            raise SystemExit(f"{path}: file not found") from None
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"{path}:{n}: invalid JSON: {e}") from None
            if isinstance(item, dict) and "prompt" in item:
                item = item["prompt"]
            if not isinstance(item, (str, dict, list)):
                raise SystemExit(f"{path}:{n}: expected a string, {{'prompt'}} or {{'messages'}}")
            prompts.append(item)
    else:
        prompts = list(args.prompts)
    if args.chat:
        prompts = [
            {"messages": [{"role": "user", "content": p}]} if isinstance(p, str) else p
            for p in prompts
        ]
    return prompts


def run_generate(
    args: GenerateArgs, out: TextIO = STDOUT, log: TextIO = STDERR
) -> list[dict[str, Any]]:
    """Results go to `out` (JSONL) or --output; progress and the final table to `log`."""
    prompts = _read_prompts(args)
    engine = build_engine(args.model, args.engine)
    compile_s = warm_up(engine, log)
    progress = Progress(log, "generate", total=len(prompts), unit="requests")
    start = time.perf_counter()
    results = engine.generate(prompts, args.sampling.params(), on_finished=progress.advance)
    elapsed = time.perf_counter() - start
    progress.close()
    rows = [
        {
            "prompt": p,
            "text": r.text,
            "token_ids": r.outputs[0].token_ids,
            "finish_reason": r.outputs[0].finish_reason,
        }
        for p, r in zip(prompts, results)
    ]
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), file=out)
    tokens = sum(len(row["token_ids"]) for row in rows)
    stats = engine.stats()
    print_table(
        log,
        [
            ("requests", len(results)),
            ("output tokens", tokens),
            ("compile (before generating)", f"{compile_s:.1f} s"),
            ("generate", f"{elapsed:.2f} s"),
            ("throughput", f"{tokens / max(elapsed, 1e-9):.1f} output tokens/s"),
            ("compilations while generating", stats["compilations_after_warmup"]),
            ("engine steps", stats["num_steps"]),
            ("prefix cache hit rate", f"{stats['prefix_cache_hit_rate']:.2f}"),
            ("attention backend", stats["attention_backend"]),
        ]
        + ([("written to", str(args.output))] if args.output is not None else []),
    )
    return rows


def run_chat(
    args: ChatArgs, stdin: TextIO = STDIN, out: TextIO = STDOUT, log: TextIO = STDERR
) -> None:
    engine = build_engine(args.model, args.engine)
    model = engine.model
    if model.tokenizer is None:
        raise SystemExit("chat needs a checkpoint with a tokenizer")
    if (args.image and model.config.vision is None) or (args.audio and model.config.audio is None):
        raise SystemExit(
            f"model type {model.config.model_type!r} does not take "
            f"{'images' if args.image else 'audio'}"
        )
    compile_s = warm_up(engine, log)
    print(f"ready (compiling took {compile_s:.1f} s)", file=log, flush=True)
    messages: list[dict[str, Any]] = []
    if args.system:
        messages.append({"role": "system", "content": args.system})
    print("Type a message (empty line or Ctrl-D to quit).", file=out)
    first = True
    while True:
        out.write("> ")
        out.flush()
        line = stdin.readline()
        if not line or not line.strip():
            break
        content: Any = line.rstrip("\n")
        if first and (args.image or args.audio):
            content = (
                [{"type": "image", "path": str(p)} for p in args.image]
                + [{"type": "audio", "path": str(p)} for p in args.audio]
                + [{"type": "text", "text": content}]
            )
        first = False
        messages.append({"role": "user", "content": content})
        reply = []
        prompt = {"messages": messages, "enable_thinking": args.enable_thinking}
        for delta in engine.stream(prompt, args.sampling.params()):
            out.write(delta.text)
            out.flush()
            reply.append(delta.text)
        out.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply)})
