"""What `python -m infer generate` and `python -m infer chat` do (the CLI only parses flags)."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any, Literal, TextIO

from autoglm_jax.engine.engine import Engine, EngineConfig
from autoglm_jax.engine.sampling import SamplingParams


@dataclasses.dataclass(frozen=True)
class ModelArgs:
    model: str = "tiny"
    """A checkpoint directory (Hugging Face or `ag.save`), or a preset name (`tiny`, ...) for a
    smoke run with RANDOM weights."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Parameter and compute dtype."""
    tensor_parallel_size: int = 1
    """Devices for tensor parallelism (2 on the 2x RTX 4090 rig)."""


@dataclasses.dataclass(frozen=True)
class EngineArgs:
    max_model_len: int = 4096
    """Longest prompt + output, in tokens."""
    max_num_batched_tokens: int = 512
    """Token budget of one engine step (decode tokens + prefill chunks)."""
    max_num_seqs: int = 32
    """Sequences decoded together."""
    page_size: int = 16
    """Tokens per KV page."""
    kv_cache_dtype: Literal["auto", "bfloat16", "float32", "int8"] = "auto"
    """KV cache storage; int8 halves it (per-token, per-head scales)."""
    enable_prefix_caching: bool = True
    """Reuse KV pages of shared prompt prefixes."""
    num_pages: int | None = None
    """KV pages to allocate (default: sized from max_num_seqs * max_model_len, capped at 2 GiB)."""

    def engine_config(self) -> EngineConfig:
        return EngineConfig(max_num_seqs=self.max_num_seqs,
                            max_num_batched_tokens=self.max_num_batched_tokens,
                            page_size=self.page_size, max_model_len=self.max_model_len,
                            enable_prefix_caching=self.enable_prefix_caching,
                            kv_cache_dtype=self.kv_cache_dtype, num_pages=self.num_pages)


@dataclasses.dataclass(frozen=True)
class SamplingArgs:
    max_tokens: int = 64
    """Tokens to generate per prompt."""
    temperature: float = 0.0
    """0 is greedy."""
    top_p: float = 1.0
    top_k: int = 0
    seed: int | None = None
    """Per-request seed: the same seed gives the same text."""

    def params(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature,
                              top_p=self.top_p, top_k=self.top_k, seed=self.seed)


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
    model: ModelArgs = ModelArgs()
    engine: EngineArgs = EngineArgs()
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
    model: ModelArgs = ModelArgs()
    engine: EngineArgs = EngineArgs()
    sampling: SamplingArgs = SamplingArgs(max_tokens=256)


def load_model(args: ModelArgs, log: TextIO = sys.stderr) -> Any:
    """A checkpoint directory, or a preset with random weights (announced as a smoke run)."""
    import jax.numpy as jnp

    import autoglm_jax as ag
    from autoglm_jax.config import preset_names

    mesh = ag.make_mesh(tensor=args.tensor_parallel_size) if args.tensor_parallel_size > 1 else None
    dtype = jnp.dtype(args.dtype)
    if Path(args.model).is_dir():
        print(f"loading {args.model} ({args.dtype})", file=log)
        return ag.load(args.model, dtype=dtype, mesh=mesh)
    if args.model not in preset_names():
        raise SystemExit(f"--model {args.model!r}: not a directory and not a preset "
                         f"(presets: {', '.join(preset_names())})")
    print(f"SMOKE RUN: preset {args.model!r} with RANDOM weights; the text is meaningless. "
          "Pass --model DIR for a real checkpoint.", file=log)
    model = ag.init(args.model, dtype=dtype, mesh=mesh)
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
    tokenizer = Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    if model.config.text.vocab_size >= tokenizer.vocab_size:
        model = dataclasses.replace(model, tokenizer=tokenizer)
    return model


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
        prompts = [{"messages": [{"role": "user", "content": p}]} if isinstance(p, str) else p
                   for p in prompts]
    return prompts


def run_generate(args: GenerateArgs, out: TextIO = sys.stdout) -> list[dict[str, Any]]:
    model = load_model(args.model)
    engine = Engine(model, args.engine.engine_config(), mesh=model.mesh)
    prompts = _read_prompts(args)
    start = time.perf_counter()
    results = engine.generate(prompts, args.sampling.params(), use_tqdm=True)
    elapsed = time.perf_counter() - start
    rows = [{"prompt": p if isinstance(p, str) else p, "text": r.text, "token_ids": r.token_ids,
             "finish_reason": r.finish_reason} for p, r in zip(prompts, results)]
    if args.output is not None:
        with open(args.output, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    else:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False), file=out)
    tokens = sum(len(r.token_ids) for r in results)
    print(f"{len(results)} requests, {tokens} tokens in {elapsed:.2f} s "
          f"({tokens / max(elapsed, 1e-9):.1f} tokens/s); stats: {engine.stats()}", file=sys.stderr)
    return rows


def run_chat(args: ChatArgs, stdin: TextIO = sys.stdin, out: TextIO = sys.stdout) -> None:
    model = load_model(args.model)
    if model.tokenizer is None:
        raise SystemExit("chat needs a checkpoint with a tokenizer")
    if (args.image and model.config.model_type in ("glm", "glm4")) or (
            args.audio and getattr(model.config, "audio", None) is None):
        raise SystemExit(f"model type {model.config.model_type!r} does not take "
                         f"{'images' if args.image else 'audio'}")
    engine = Engine(model, args.engine.engine_config(), mesh=model.mesh)
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
            content = ([{"type": "image", "path": str(p)} for p in args.image]
                       + [{"type": "audio", "path": str(p)} for p in args.audio]
                       + [{"type": "text", "text": content}])
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
