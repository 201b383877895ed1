"""Engine decode with async scheduling on and off, in one run: output tokens per second and
wall time per engine step, the same requests and compiled programs for both.

    python benchmarks/async_scheduling.py [--model small] [--requests 1 16] [--output-len 64]

Async scheduling overlaps the host's work of a step (scheduling, building and copying the
inputs, fetching tokens, stops, detokenizing) with the device's; the gain is the host's share
of a step, so it is largest for small models, batch 1 and fast devices. Prints one JSON line
per batch size; both modes must give the same greedy tokens (checked).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import numpy as np

import autoglm_jax as ag
from autoglm_jax.engine import Engine, EngineConfig, SamplingParams


def timed(engine: Engine, prompts: list[list[int]], params: SamplingParams, repeats: int):
    best = None
    for _ in range(repeats):
        steps = engine.num_steps
        start = time.perf_counter()
        outs = engine.generate(prompts, params)
        seconds = time.perf_counter() - start
        if best is None or seconds < best[0]:
            best = (seconds, engine.num_steps - steps, [o.outputs[0].token_ids for o in outs])
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small")
    parser.add_argument("--requests", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model = ag.init(args.model, seed=0)
    vocab = model.config.text.vocab_size
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    for n in args.requests:
        rng = np.random.RandomState(n)
        prompts = [list(map(int, rng.randint(0, vocab, args.prompt_len))) for _ in range(n)]
        config = EngineConfig(
            max_num_seqs=max(n, 1),
            max_num_batched_tokens=max(256, args.prompt_len),
            max_model_len=args.prompt_len + args.output_len + 1,
        )
        row = {"model": args.model, "requests": n, "device": jax.default_backend()}
        tokens = {}
        for mode in (True, False):
            engine = Engine(model, dataclasses.replace(config, async_scheduling=mode))
            engine.warmup()
            seconds, steps, tokens[mode] = timed(engine, prompts, params, args.repeats)
            name = "async" if mode else "sync"
            row[f"{name}_tok_s"] = round(n * args.output_len / seconds, 1)
            row[f"{name}_ms_per_step"] = round(1000 * seconds / steps, 3)
            assert engine.stats()["compilations_after_warmup"] == 0
        if tokens[True] != tokens[False]:
            raise SystemExit("async and sync scheduling gave different tokens")
        row["speedup"] = round(row["async_tok_s"] / row["sync_tok_s"], 3)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
