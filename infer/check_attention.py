"""Kernel correctness on this device (wired as `python -m infer check-attention`).

Runs the ragged Pallas kernel on a mixed prefill + decode layout and the decode kernel on a
decode layout, for each head layout (GQA, MQA, MHA; head dims 64, 80, 96, 128) and KV dtype
(float32, bfloat16, int8 pages), against the float64 reference, on adversarial inputs
(`random_inputs`: shuffled pages, NaN in everything that must be masked). On a GPU this runs
the Triton kernels themselves, the one check the CPU suite cannot make (there they run in
interpret mode); on CPU it runs interpret mode. Prints one markdown row per case, writes
`check_attention.json`, and exits 1 if any case fails or does not compile.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.kernels.ragged_paged_attention import ragged_paged_attention
from autoglm_jax.kernels.ragged_paged_attention.random_inputs import (
    TOL,
    Shape,
    call,
    make_inputs,
    reference,
)

Kernel = Literal["ragged", "decode"]
KvDtype = Literal["float32", "bfloat16", "int8"]

# Lengths cross page (16) and block boundaries; the ragged layout mixes decode rows with
# prefill chunks that end mid-page.
DECODE_KV_LENS = (1, 17, 40, 9, 32, 128, 27, 100)
RAGGED_Q_LENS = (1, 7, 1, 13, 1, 3)
RAGGED_KV_LENS = (1, 40, 17, 96, 128, 3)


@dataclasses.dataclass(frozen=True)
class CheckAttentionArgs:
    """Ragged and decode Pallas kernels against the float64 reference on this device."""

    heads: tuple[str, ...] = ("32x2x128", "8x1x80", "4x4x96", "16x2x64")
    """Head layouts, each QUERY_HEADSxKV_HEADSxHEAD_DIM (GQA 16 and 8, MQA, MHA by default)."""
    kv_dtypes: tuple[KvDtype, ...] = ("float32", "bfloat16", "int8")
    """KV page dtypes; q is float32 with float32 pages and bfloat16 otherwise."""
    kernels: tuple[Kernel, ...] = ("ragged", "decode")
    interpret: bool | None = None
    """Pallas interpret mode; default: on CPU only."""
    out_dir: pathlib.Path = pathlib.Path("bench_out/attention")
    seed: int = 0


def parse_heads(text: str) -> tuple[int, int, int]:
    parts = text.lower().split("x")
    if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise SystemExit(f"--heads: {text!r} is not QUERY_HEADSxKV_HEADSxHEAD_DIM (e.g. 32x2x128)")
    n, k, h = (int(p) for p in parts)
    if n % k:
        raise SystemExit(f"--heads: {text!r}: {n} query heads do not split into {k} KV heads")
    return n, k, h


def head_kind(num_q_heads: int, num_kv_heads: int) -> str:
    if num_kv_heads == num_q_heads:
        return "MHA"
    return "MQA" if num_kv_heads == 1 else f"GQA {num_q_heads // num_kv_heads}"


def _inputs(kernel: Kernel, heads: tuple[int, int, int], kv: KvDtype, seed: int):
    n, k, h = heads
    q_lens, kv_lens = (
        ((1,) * len(DECODE_KV_LENS), DECODE_KV_LENS)
        if kernel == "decode"
        else (RAGGED_Q_LENS, RAGGED_KV_LENS)
    )
    page = 16
    shape = Shape(
        num_tokens=sum(q_lens) + 3,  # padding rows too
        num_seqs=len(q_lens) + 1,  # and a padding sequence
        num_pages=sum(-(-x // page) for x in kv_lens) + 4,
        page_size=page,
        pages_per_seq=8,
        num_q_heads=n,
        num_kv_heads=k,
        head_dim=h,
    )
    dtype = jnp.float32 if kv == "float32" else jnp.bfloat16
    rng = np.random.default_rng(seed)
    return make_inputs(rng, shape, q_lens, kv_lens, dtype=dtype, quantized=kv == "int8"), dtype


def check_case(
    kernel: Kernel, heads: tuple[int, int, int], kv: KvDtype, interpret: bool, seed: int = 0
) -> dict[str, Any]:
    """One case: the kernel's max abs error against the reference, and whether it passes."""
    args, dtype = _inputs(kernel, heads, kv, seed)
    sm_scale = heads[2] ** -0.5
    row: dict[str, Any] = dict(
        kernel=kernel,
        heads="x".join(map(str, heads)),
        kind=head_kind(*heads[:2]),
        kv_dtype=kv,
        bound=TOL[dtype],
    )
    fn = functools.partial(
        ragged_paged_attention, interpret=interpret, decode_only=kernel == "decode"
    )
    start = time.perf_counter()
    try:
        out = np.asarray(call(jax.jit(fn, static_argnames="sm_scale"), args, sm_scale=sm_scale))
    except Exception as e:  # noqa: BLE001 - a case that does not compile is a failed case
        return row | dict(error=f"{type(e).__name__}: {str(e)[:300]}", ok=False)
    row["seconds"] = round(time.perf_counter() - start, 2)  # compile + run
    out = out.astype(np.float32)
    live = int(np.asarray(args["cu_q_lens"])[int(args["num_seqs"][0])])
    ref = np.asarray(reference(args, sm_scale), np.float32)
    finite = bool(np.isfinite(out).all())
    err = float(np.abs(out[:live] - ref[:live]).max()) if finite else float("nan")
    padding_zero = bool(finite and (out[live:] == 0).all())
    row.update(max_abs_error=err, finite=finite, padding_zero=padding_zero)
    row["ok"] = finite and padding_zero and err <= row["bound"]
    return row


def _table(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| kernel | heads (q x kv x dim) | layout | KV pages | max abs error | bound | result |",
        "|---|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        if "error" in r:
            result, err = f"FAILED: {r['error'][:120]}", "-"
        else:
            err = f"{r['max_abs_error']:.2e}"
            why = [] if r["finite"] else ["non-finite output"]
            why += [] if r["padding_zero"] or not r["finite"] else ["padding rows not zero"]
            result = "ok" if r["ok"] else ": ".join(["FAILED", *why])
        lines.append(
            f"| {r['kernel']} | {r['heads']} | {r['kind']} | {r['kv_dtype']} | {err} | "
            f"{r['bound']:g} | {result} |"
        )
    return "\n".join(lines)


def run_check_attention(args: CheckAttentionArgs) -> list[dict[str, Any]]:
    heads = [parse_heads(h) for h in args.heads]
    interpret = jax.default_backend() == "cpu" if args.interpret is None else args.interpret
    device = jax.devices()[0]
    print(
        f"# check-attention on {device.device_kind} ({jax.default_backend()}), "
        f"interpret={interpret}",
        flush=True,
    )
    rows = []
    for kernel in args.kernels:
        for h in heads:
            for kv in args.kv_dtypes:
                rows.append(check_case(kernel, h, kv, interpret, args.seed))
    print(_table(rows), flush=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    result = dict(device=device.device_kind, interpret=interpret, rows=rows)
    (args.out_dir / "check_attention.json").write_text(json.dumps(result, indent=1))
    failed = sum(not r["ok"] for r in rows)
    print(f"{len(rows) - failed} of {len(rows)} cases pass", flush=True)
    if failed:
        raise SystemExit(1)
    return rows
