"""Attention benchmark at GLM-4-9B shapes (wired as `python -m infer bench-attention`).

Times decode batches (one token per sequence) and mixed batches (the decode batch plus one
chunked-prefill chunk) for the ragged Pallas kernel, the decode Pallas kernel (decode batches
only: `decode_only=True`), the XLA path and, for bf16 decode, jax's bundled
`jax.experimental.pallas.ops.gpu.paged_attention`, all in one run. Reports
microseconds per call and the achieved bytes/s (K/V, scales, q and output bytes that must
move) against this device's copy bandwidth, measured in the same run. Writes
`attention.json` and `attention.png` (if matplotlib is importable) under `out_dir`.

On CPU only the XLA path runs (the Pallas kernel needs a GPU outside interpret mode); use
`quick=True` there.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import json
import math
import pathlib
import statistics
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.kernels.kv_cache import quantize_kv
from autoglm_jax.kernels.ragged_paged_attention import (
    ragged_paged_attention,
    ragged_paged_attention_xla,
)

KvDtype = Literal["bfloat16", "int8"]
Impl = Literal["pallas", "pallas_decode", "jax_paged_attention", "xla"]


@dataclasses.dataclass(frozen=True)
class BenchAttentionArgs:
    """Options of the attention benchmark."""

    batch_sizes: tuple[int, ...] = (1, 8, 32, 128)
    """Decode batch sizes: sequences per call, one new token each."""
    context_lens: tuple[int, ...] = (512, 2048, 8192, 32768)
    """KV length of every sequence (this step's tokens included)."""
    dtypes: tuple[KvDtype, ...] = ("bfloat16", "int8")
    """KV page dtypes; int8 pages carry a float32 scale per token and KV head. q is bfloat16."""
    impls: tuple[Impl, ...] = ("pallas", "pallas_decode", "jax_paged_attention", "xla")
    """Implementations to time (pallas_decode: decode only; jax_paged_attention: bf16 decode)."""
    prefill_chunk: int = 512
    """Tokens of the prefill chunk added to each decode batch in the mixed case; 0 skips it."""
    page_size: int = 16
    """Tokens per KV page."""
    num_q_heads: int = 32
    """Query heads (GLM-4-9B: 32)."""
    num_kv_heads: int = 2
    """KV heads (GLM-4-9B: 2)."""
    head_dim: int = 128
    """Head dimension (GLM-4-9B: 128)."""
    max_kv_tokens: int = 128 * 32768
    """Skip cases whose total KV tokens (batch * context) exceed this (memory bound)."""
    warmup: int = 3
    """Untimed calls before timing (the first also compiles)."""
    iters: int = 10
    """Timed samples per case; the median is reported."""
    calls_per_sample: int = 10
    """Back-to-back calls per sample, so host dispatch overlaps device work."""
    copy_bytes: int = 1 << 30
    """Size of the array copied to measure the device's copy bandwidth."""
    out_dir: pathlib.Path = pathlib.Path("bench_out/attention")
    """Where attention.json and attention.png go."""
    quick: bool = False
    """CPU smoke test: tiny contexts and batches, few iterations (for sizes left at default)."""
    seed: int = 0
    """Seed for the random q, K, V and page assignment."""

    def resolved(self) -> BenchAttentionArgs:
        """With `quick`, the sizes still at their defaults shrink to a CPU smoke test."""
        if not self.quick:
            return self
        small = dict(
            batch_sizes=(1, 4),
            context_lens=(128,),
            prefill_chunk=16,
            warmup=1,
            iters=3,
            calls_per_sample=1,
            copy_bytes=16 << 20,
        )
        defaults = {f.name: f.default for f in dataclasses.fields(self)}
        return dataclasses.replace(
            self, **{k: v for k, v in small.items() if getattr(self, k) == defaults[k]}
        )


@dataclasses.dataclass(frozen=True)
class _Case:
    mode: Literal["decode", "mixed"]
    batch: int
    context: int
    dtype: KvDtype


def _median_us(fn, args, *, warmup: int, iters: int, calls: int) -> float:
    for _ in range(max(1, warmup)):
        jax.block_until_ready(fn(*args))
    samples = []
    for _ in range(iters):
        t0 = time.perf_counter()
        out = None
        for _ in range(calls):
            out = fn(*args)
        jax.block_until_ready(out)
        samples.append((time.perf_counter() - t0) / calls * 1e6)
    return statistics.median(samples)


def measure_copy_bandwidth(num_bytes: int, iters: int = 10) -> float:
    """Bytes/s of a device copy (read + write) of a num_bytes uint32 array."""
    x = jnp.arange(max(1, num_bytes // 4), dtype=jnp.uint32)
    # bitwise-not cannot be simplified away, so each call reads and writes every byte.
    fn = jax.jit(jnp.invert)
    us = _median_us(fn, (x,), warmup=2, iters=iters, calls=1)
    return 2 * x.nbytes / (us * 1e-6)


@functools.partial(jax.jit, static_argnames=("q_shape", "kv_shape", "quantized"))
def _random_qkv(key, *, q_shape, kv_shape, quantized):
    """bf16 q and K/V pages, the pages int8 with scales if quantized (one compile per shape)."""
    kq, kk, kv = jax.random.split(key, 3)
    q = jax.random.normal(kq, q_shape, jnp.bfloat16)
    k = jax.random.normal(kk, kv_shape, jnp.bfloat16)
    v = jax.random.normal(kv, kv_shape, jnp.bfloat16)
    if not quantized:
        return dict(q=q, k_pages=k, v_pages=v)
    (k, k_scales), (v, v_scales) = quantize_kv(k), quantize_kv(v)
    return dict(q=q, k_pages=k, v_pages=v, k_scales=k_scales, v_scales=v_scales)


def _make_inputs(case: _Case, a: BenchAttentionArgs, rng: np.random.Generator) -> dict[str, Any]:
    page, kh, h, n = a.page_size, a.num_kv_heads, a.head_dim, a.num_q_heads
    pages_per_seq = -(-case.context // page)
    num_seqs = case.batch + (case.mode == "mixed")
    num_pages = num_seqs * pages_per_seq
    block_tables = rng.permutation(num_pages).astype(np.int32).reshape(num_seqs, pages_per_seq)
    q_lens = [1] * case.batch + ([a.prefill_chunk] if case.mode == "mixed" else [])
    cu = np.concatenate([[0], np.cumsum(q_lens)]).astype(np.int32)
    inputs = _random_qkv(
        jax.random.key(int(rng.integers(1 << 31)), impl="rbg"),
        q_shape=(int(cu[-1]), n, h),
        kv_shape=(num_pages, page, kh, h),
        quantized=case.dtype == "int8",
    )
    inputs.update(
        kv_lens=jnp.full((num_seqs,), case.context, jnp.int32),
        block_tables=jnp.asarray(block_tables),
        cu_q_lens=jnp.asarray(cu),
        num_seqs=jnp.asarray([num_seqs], jnp.int32),
    )
    return inputs


def _bytes_moved(case: _Case, inputs: dict[str, Any], a: BenchAttentionArgs) -> int:
    """Bytes an ideal kernel must move: each sequence's K/V (+ scales), q and the output."""
    kv_tokens = int(np.asarray(inputs["kv_lens"]).sum())
    per_token = 2 * a.num_kv_heads * a.head_dim * inputs["k_pages"].dtype.itemsize
    if case.dtype == "int8":
        per_token += 2 * a.num_kv_heads * 4
    return kv_tokens * per_token + 2 * inputs["q"].nbytes


def _run_impl(impl: Impl, case: _Case, inputs: dict[str, Any], sm_scale: float):
    """(jitted fn, args) for one implementation, or a string saying why it is skipped."""
    args = (
        inputs["q"],
        inputs["k_pages"],
        inputs["v_pages"],
        inputs["kv_lens"],
        inputs["block_tables"],
        inputs["cu_q_lens"],
        inputs["num_seqs"],
    )
    scales = dict(k_scales=inputs.get("k_scales"), v_scales=inputs.get("v_scales"))
    on_gpu = jax.default_backend() == "gpu"
    if impl == "xla":
        return functools.partial(ragged_paged_attention_xla, sm_scale=sm_scale, **scales), args
    if not on_gpu:
        return f"{impl} needs a GPU (backend is {jax.default_backend()})"
    if impl == "pallas":
        return functools.partial(ragged_paged_attention, sm_scale=sm_scale, **scales), args
    if impl == "pallas_decode":
        if case.mode != "decode":
            return "pallas_decode is the all-decode kernel: decode batches only"
        fn = functools.partial(ragged_paged_attention, sm_scale=sm_scale, decode_only=True)
        return functools.partial(fn, **scales), args
    # jax's bundled Triton paged attention: decode only, bf16, pages as [K, P, page, H].
    if case.mode != "decode" or case.dtype != "bfloat16":
        return "jax_paged_attention is timed for bf16 decode only"
    from jax.experimental.pallas.ops.gpu import paged_attention as jax_pa  # GPU-only path

    pages_per_seq = inputs["block_tables"].shape[1]
    k_splits = math.gcd(pages_per_seq, 16)
    fn = jax.jit(
        functools.partial(
            jax_pa.paged_attention,
            k_splits=k_splits,
            pages_per_compute_block=min(8, pages_per_seq // k_splits),
        )
    )
    q = inputs["q"] * jnp.asarray(sm_scale, inputs["q"].dtype)  # it applies no scale itself
    k_t = jnp.transpose(inputs["k_pages"], (2, 0, 1, 3))  # [K, P, page, H]
    v_t = jnp.transpose(inputs["v_pages"], (2, 0, 1, 3))
    return fn, (q, k_t, v_t, inputs["block_tables"], inputs["kv_lens"])


def _cases(a: BenchAttentionArgs) -> list[_Case]:
    modes = ["decode"] + (["mixed"] if a.prefill_chunk > 0 else [])
    return [
        _Case(mode, b, c, d)
        for d in a.dtypes
        for mode in modes
        for b in a.batch_sizes
        for c in a.context_lens
        if b * c <= a.max_kv_tokens
    ]


def run_bench_attention(args: BenchAttentionArgs) -> dict[str, Any]:
    """Runs the benchmark; returns (and writes to out_dir/attention.json) the results."""
    a = args.resolved()
    device = jax.devices()[0]
    print(f"bench-attention on {device.device_kind} ({jax.default_backend()})")
    if jax.default_backend() != "gpu":
        print("  the Pallas kernels and jax_paged_attention need a GPU; timing the XLA path only")
    copy_bw = measure_copy_bandwidth(a.copy_bytes)
    print(f"  copy bandwidth: {copy_bw / 1e9:.1f} GB/s")
    sm_scale = 1.0 / math.sqrt(a.head_dim)
    rng = np.random.default_rng(a.seed)
    rows: list[dict[str, Any]] = []
    for case in _cases(a):
        inputs = _make_inputs(case, a, rng)
        moved = _bytes_moved(case, inputs, a)
        reference_out = None
        for impl in a.impls:
            row: dict[str, Any] = dict(
                dataclasses.asdict(case), impl=impl, bytes=moved, tokens=int(inputs["q"].shape[0])
            )
            made = _run_impl(impl, case, inputs, sm_scale)
            if isinstance(made, str):
                row.update(skipped=made)
                rows.append(row)
                continue
            fn, fn_args = made
            try:
                us = _median_us(
                    fn, fn_args, warmup=a.warmup, iters=a.iters, calls=a.calls_per_sample
                )
                out = np.asarray(fn(*fn_args), np.float32)
            except Exception as e:  # a failing implementation must not lose the others' numbers
                row.update(skipped=f"error: {type(e).__name__}: {e}"[:500])
                rows.append(row)
                print(f"  {case} {impl}: {row['skipped']}")
                continue
            if reference_out is None:
                reference_out = out
            row["max_abs_diff_vs_first"] = float(np.abs(out - reference_out).max())
            gbps = moved / (us * 1e-6) / 1e9
            row.update(us_per_call=us, GBps=gbps, frac_of_copy_bw=gbps * 1e9 / copy_bw)
            rows.append(row)
            print(
                f"  {case.mode:6s} B={case.batch:<4d} ctx={case.context:<6d} {case.dtype:8s} "
                f"{impl:20s} {us:10.1f} us  {gbps:8.1f} GB/s  "
                f"({row['frac_of_copy_bw']:.0%} of copy)"
            )
        del inputs
    result = dict(
        date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        device=device.device_kind,
        backend=jax.default_backend(),
        jax_version=jax.__version__,
        copy_bandwidth_GBps=copy_bw / 1e9,
        args={
            k: (str(v) if isinstance(v, pathlib.Path) else v)
            for k, v in dataclasses.asdict(a).items()
        },
        results=rows,
    )
    a.out_dir.mkdir(parents=True, exist_ok=True)
    json_path = a.out_dir / "attention.json"
    json_path.write_text(json.dumps(result, indent=2))
    print(f"  wrote {json_path}")
    chart = _plot(result, a.out_dir / "attention.png")
    if chart:
        print(f"  wrote {chart}")
    return result


def _plot(result: dict[str, Any], path: pathlib.Path) -> pathlib.Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("  matplotlib is not installed: no chart")
        return None
    timed = [r for r in result["results"] if "us_per_call" in r]
    panels = sorted({(r["mode"], r["dtype"]) for r in timed})
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (mode, dtype) in zip(axes[0], panels):
        lines: dict[tuple[str, int], list[tuple[int, float]]] = {}
        for r in timed:
            if (r["mode"], r["dtype"]) == (mode, dtype):
                lines.setdefault((r["impl"], r["batch"]), []).append((r["context"], r["GBps"]))
        for (impl, batch), pts in sorted(lines.items()):
            pts.sort()
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o",
                linestyle={"pallas": "-", "pallas_decode": "-.", "xla": ":"}.get(impl, "--"),
                label=f"{impl} B={batch}",
            )
        ax.axhline(result["copy_bandwidth_GBps"], color="k", linewidth=0.8, label="copy bandwidth")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length")
        ax.set_ylabel("achieved GB/s")
        ax.set_title(f"{mode}, {dtype} KV ({result['device']})")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
