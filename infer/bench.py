"""`python -m infer bench`: engine throughput and latency on the AutoGLM batching-guide
workload (prompts of about 384 tokens, 256 output tokens, many concurrent users or a Poisson
request rate), against three baselines measured in the same run: one request at a time
through the same engine, static batches, and Hugging Face transformers `generate` on the same
weights (run in a subprocess so this package never imports torch)."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from autoglm_jax.engine import Engine, SamplingParams
from autoglm_jax.nn.quant_formats import tree_bytes
from infer.flags import EngineFlags, ModelFlags, build_engine, warm_up


@dataclasses.dataclass(frozen=True)
class BenchArgs:
    """Benchmark the engine (continuous batching) against one-at-a-time, static batches and
    Hugging Face generate."""

    model: ModelFlags = ModelFlags(model="small")
    engine: EngineFlags = EngineFlags()
    num_requests: int = 64
    """Requests in the continuous-batching run."""
    request_rate: float | None = None
    """Poisson arrivals per second; None sends every request at once (closed burst)."""
    prompt_len: int = 384
    """Prompt tokens per request (random ids)."""
    output_len: int = 256
    """Output tokens per request (EOS ignored)."""
    baseline_requests: int = 4
    """Requests for the one-at-a-time baseline (its throughput does not depend on the count)."""
    static_batch_size: int = 8
    static_batches: int = 2
    """Batches for the static-batching baseline."""
    hf_baseline: bool = True
    """Also time transformers' generate (needs torch and transformers installed)."""
    out_dir: Path = Path("bench_out")
    prompt_seed: int = 0
    """Seed of the random prompts (--seed, the engine's, seeds sampling and random weights)."""


def _prompts(n: int, length: int, vocab: int, seed: int) -> list[list[int]]:
    rng = np.random.RandomState(seed)
    return [list(map(int, rng.randint(0, min(vocab, 30000), length))) for _ in range(n)]


def _run(
    engine: Engine, prompts: list[list[int]], params: SamplingParams, rate: float | None, seed: int
) -> dict[str, Any]:
    """Feed requests (all at once or Poisson), step until done, and time every token."""
    rng = np.random.RandomState(seed)
    arrivals = (
        np.zeros(len(prompts))
        if rate is None
        else np.cumsum(rng.exponential(1.0 / rate, len(prompts)))
    )
    compiles_before = engine.stats()["compilations"]
    start = time.perf_counter()
    pending = list(range(len(prompts)))
    token_times: dict[str, list[float]] = {}
    arrival_of: dict[str, float] = {}
    done = 0
    while done < len(prompts):
        now = time.perf_counter() - start
        while pending and arrivals[pending[0]] <= now:
            i = pending.pop(0)
            rid = engine.add_request(prompts[i], params)
            arrival_of[rid] = start + arrivals[i]
            token_times[rid] = []
        if not engine.has_unfinished():
            time.sleep(max(0.0, arrivals[pending[0]] - now))
            continue
        for d in engine.step():
            t = time.perf_counter()
            token_times[d.request_id].extend([t] * len(d.token_ids))
            if d.finished:
                done += 1
                engine.release(d.request_id)
    wall = time.perf_counter() - start
    ttft = [ts[0] - arrival_of[r] for r, ts in token_times.items() if ts]
    itl = [b - a for ts in token_times.values() for a, b in zip(ts, ts[1:])]
    tpot = [(ts[-1] - ts[0]) / (len(ts) - 1) for ts in token_times.values() if len(ts) > 1]
    tokens = sum(len(ts) for ts in token_times.values())

    def pct(xs: list[float], q: float) -> float:
        return float(np.percentile(xs, q)) if xs else float("nan")

    return {
        "requests": len(prompts),
        "output_tokens": tokens,
        "wall_s": wall,
        "requests_per_s": len(prompts) / wall,
        "tokens_per_s": tokens / wall,
        "ttft_p50_s": pct(ttft, 50),
        "ttft_p99_s": pct(ttft, 99),
        "tpot_p50_s": pct(tpot, 50),
        "tpot_p99_s": pct(tpot, 99),
        "itl_p50_s": pct(itl, 50),
        "itl_p99_s": pct(itl, 99),
        "compilations_during_run": engine.stats()["compilations"] - compiles_before,
    }


def _hf_baseline(
    model: Any, prompts: list[list[int]], output_len: int, batch: int
) -> dict[str, Any]:
    import autoglm_jax as ag

    with tempfile.TemporaryDirectory() as tmp:
        ag.export_hf(model, tmp)
        spec = {"dir": tmp, "prompts": prompts, "output_len": output_len, "batch": batch}
        script = Path(__file__).resolve().parents[1] / "benchmarks" / "hf_generate.py"
        proc = subprocess.run(
            [sys.executable, str(script)],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=3600,
        )
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_bench(args: BenchArgs) -> dict[str, Any]:
    flags = args.engine
    if flags.max_model_len is None:  # room for the workload, not the model's whole context
        flags = dataclasses.replace(
            flags, max_model_len=args.prompt_len + args.output_len + flags.block_size
        )
    start = time.perf_counter()
    engine = build_engine(args.model, flags)  # a preset's random init, or reading a checkpoint
    load_s = time.perf_counter() - start
    model = engine.model
    text = model.config.text
    params = SamplingParams(max_tokens=args.output_len, temperature=0.0, ignore_eos=True)
    vocab = text.vocab_size
    print(
        f"bench: {args.model.model} ({model.num_params / 1e6:.1f}M params), "
        f"{args.num_requests} requests x {args.prompt_len} prompt / {args.output_len} output "
        f"tokens, backend {engine.attention_impl}",
        file=sys.stderr,
    )
    compile_s = warm_up(engine)
    # A throw-away batch first (its prompts differ from the timed ones, so the prefix cache
    # cannot flatter anything): first-run effects stay out of the timings.
    warm = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    engine.generate(_prompts(flags.max_num_seqs, args.prompt_len, vocab, 999), warm)
    results: dict[str, Any] = {
        "load_s": load_s,
        "compile_s": compile_s,
        "date": time.strftime("%Y-%m-%d"),
        "machine": f"{platform.node()} {platform.machine()} {os.cpu_count()} cpus",
        "backend": engine.attention_impl,
        "device": jax.devices()[0].device_kind,
        "weight_bytes": tree_bytes(model.params),
        "args": _jsonable(args),
    }
    print("bench: continuous batching ...", file=sys.stderr)
    results["continuous"] = _run(
        engine,
        _prompts(args.num_requests, args.prompt_len, vocab, args.prompt_seed),
        params,
        args.request_rate,
        1,
    )
    print("bench: one request at a time ...", file=sys.stderr)
    single = [
        _run(engine, [p], params, None, 2)
        for p in _prompts(args.baseline_requests, args.prompt_len, vocab, args.prompt_seed + 1)
    ]
    results["one_at_a_time"] = _merge(single)
    print("bench: static batches ...", file=sys.stderr)
    static = [
        _run(
            engine,
            _prompts(args.static_batch_size, args.prompt_len, vocab, args.prompt_seed + 10 + b),
            params,
            None,
            3,
        )
        for b in range(args.static_batches)
    ]
    results["static_batches"] = _merge(static)
    if args.hf_baseline:
        print("bench: transformers generate ...", file=sys.stderr)
        results["hf_generate"] = _hf_baseline(
            model,
            _prompts(args.static_batch_size, args.prompt_len, vocab, args.prompt_seed + 20),
            args.output_len,
            args.static_batch_size,
        )
    cont = results["continuous"]["tokens_per_s"]
    results["speedup_vs_one_at_a_time"] = cont / results["one_at_a_time"]["tokens_per_s"]
    results["speedup_vs_static_batches"] = cont / results["static_batches"]["tokens_per_s"]
    if "tokens_per_s" in results.get("hf_generate", {}):
        results["speedup_vs_hf_generate"] = cont / results["hf_generate"]["tokens_per_s"]
    results["engine_stats"] = engine.stats()
    args.out_dir.mkdir(parents=True, exist_ok=True)
    (args.out_dir / "bench.json").write_text(json.dumps(results, indent=2))
    _chart(results, args.out_dir / "bench.png")
    print(json.dumps({k: v for k, v in results.items() if k.startswith("speedup")}, indent=2))
    print(f"bench: wrote {args.out_dir / 'bench.json'} and bench.png", file=sys.stderr)
    return results


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    tokens = sum(r["output_tokens"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    out = {
        "requests": sum(r["requests"] for r in runs),
        "output_tokens": tokens,
        "wall_s": wall,
        "requests_per_s": sum(r["requests"] for r in runs) / wall,
        "tokens_per_s": tokens / wall,
        "compilations_during_run": sum(r["compilations_during_run"] for r in runs),
    }
    for key in ("ttft_p50_s", "tpot_p50_s", "itl_p50_s"):
        out[key] = float(np.median([r[key] for r in runs]))
    return out


def _jsonable(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {k: _jsonable(v) for k, v in dataclasses.asdict(obj).items()}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    return str(obj) if isinstance(obj, Path) else obj


def _chart(results: dict[str, Any], path: Path) -> None:
    """A bar chart of output tokens/s per mode (Pillow, no plotting library needed)."""
    from PIL import Image, ImageDraw

    modes = [
        (k, results[k]["tokens_per_s"])
        for k in ("continuous", "static_batches", "one_at_a_time", "hf_generate")
        if "tokens_per_s" in results.get(k, {})
    ]
    width, height, margin = 640, 360, 60
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    top = max(v for _, v in modes) or 1.0
    bar = (width - 2 * margin) // max(1, len(modes))
    for i, (name, value) in enumerate(modes):
        x0 = margin + i * bar + 10
        h = int((height - 2 * margin) * value / top)
        draw.rectangle([x0, height - margin - h, x0 + bar - 20, height - margin], fill="steelblue")
        draw.text((x0, height - margin + 5), name, fill="black")
        draw.text((x0, height - margin - h - 14), f"{value:.1f}", fill="black")
    draw.text((margin, 15), "output tokens/s (higher is better)", fill="black")
    img.save(path)
