"""tools/gpu-measure's summary: its JSON files -> the markdown block for docs/benchmarks.md.

    python tools/gpu_summary.py OUT_DIR

Every figure comes from a file a stage wrote; a stage with no file is reported with its exit
status and the last line of its log. The 2x RTX 4090 projection assumes the measured fraction
of this GPU's copy bandwidth carries over to a 4090 (1,008 GB/s each, tensor parallel: each
card reads half the weights) and leaves out the all-reduce between the cards.
"""

from __future__ import annotations

import datetime
import json
import sys
from pathlib import Path
from typing import Any

RTX_4090_GBPS = 1008.0
STAGES = {"check": "check/check_attention.json", "attention": "attention/attention.json"}


def _load(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _missing(out: Path, stage: str) -> str:
    rc = (out / f"{stage}.rc").read_text().strip() if (out / f"{stage}.rc").exists() else "?"
    log = (
        (out / f"{stage}.log").read_text().strip().splitlines()
        if (out / f"{stage}.log").exists()
        else []
    )
    why = {"124": "timed out", "137": "timed out", "?": "not run"}.get(rc, f"exit {rc}")
    return f"- `{stage}`: no result ({why}; last log line: `{(log or ['-'])[-1][:200]}`)"


def check_section(out: Path) -> list[str]:
    data = _load(out / STAGES["check"])
    if data is None:
        return [_missing(out, "check")]
    rows = data["rows"]
    passed = sum(r["ok"] for r in rows)
    lines = [
        f"Kernel correctness (`infer check-attention`, interpret={data['interpret']}): "
        f"{passed} of {len(rows)} cases pass.",
        "",
        "| kernel | heads | KV pages | max abs error | bound | result |",
        "|---|---|---|---:|---:|---|",
    ]
    for r in rows:
        err = f"{r['max_abs_error']:.1e}" if "max_abs_error" in r else "-"
        result = "ok" if r["ok"] else "FAILED " + r.get("error", "")[:100]
        lines.append(
            f"| {r['kernel']} | {r['heads']} ({r['kind']}) | {r['kv_dtype']} | {err} | "
            f"{r['bound']:g} | {result} |"
        )
    return lines


def attention_section(out: Path) -> list[str]:
    data = _load(out / STAGES["attention"])
    if data is None:
        return [_missing(out, "attention")]
    cells: dict[tuple[int, int, str], dict[str, dict[str, Any]]] = {}
    impls: list[str] = []
    for r in data["results"]:
        if r["mode"] != "decode":
            continue
        cells.setdefault((r["batch"], r["context"], r["dtype"]), {})[r["impl"]] = r
        if r["impl"] not in impls:
            impls.append(r["impl"])
    lines = [
        f"Attention decode (`infer bench-attention`), us per call (share of the measured "
        f"copy bandwidth, {data['copy_bandwidth_GBps']:.0f} GB/s):",
        "",
        "| B | context | KV | " + " | ".join(impls) + " |",
        "|---:|---:|---|" + "---:|" * len(impls),
    ]
    for (b, ctx, dtype), by_impl in sorted(cells.items()):
        row = []
        for impl in impls:
            r = by_impl.get(impl)
            if r is None or "us_per_call" not in r:
                row.append("-" if r is None else "skipped")
            else:
                row.append(f"{r['us_per_call']:.1f} ({r['frac_of_copy_bw']:.0%})")
        lines.append(f"| {b} | {ctx} | {dtype} | " + " | ".join(row) + " |")
    return lines


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def engine_section(out: Path) -> list[str]:
    lines = [
        "Engine (`infer bench`, random weights, greedy, no compilation in the timed runs "
        "if the last column is 0):",
        "",
        "| weights | bytes | batch-1 ITL p50 | workload | output tok/s | ITL p50 | "
        "init/load s | compile s | compilations in run |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for stage in ("bf16", "int8", "sync"):
        data = _load(out / stage / "bench.json")
        if data is None:
            notes.append(_missing(out, stage))
            continue
        single, cont, a = data["one_at_a_time"], data["continuous"], data["args"]
        wl = f"{cont['requests']} x ({a['prompt_len']} in, {a['output_len']} out)"
        lines.append(
            f"| {a['model']['model']} {a['model']['dtype']} quantize={a['model']['quantize']}"
            f"{'' if a.get('engine', {}).get('async_scheduling', True) else ', async off'} | "
            f"{data['weight_bytes'] / 1e9:.2f} GB | "
            f"{single['itl_p50_s'] * 1e3:.2f} ms | {wl} | {cont['tokens_per_s']:.0f} | "
            f"{cont['itl_p50_s'] * 1e3:.2f} ms | {_seconds(data.get('load_s'))} | "
            f"{data['compile_s']:.0f} | "
            f"{cont['compilations_during_run'] + single['compilations_during_run']} |"
        )
        copy = _load(out / STAGES["attention"])
        if copy is not None:
            floor_ms = data["weight_bytes"] / (copy["copy_bandwidth_GBps"] * 1e9) * 1e3
            fraction = floor_ms / (single["itl_p50_s"] * 1e3)
            rtx_ms = data["weight_bytes"] / 2 / (RTX_4090_GBPS * 1e9 * fraction) * 1e3
            notes.append(
                f"- {stage}: weight-read floor {floor_ms:.2f} ms at the copy bandwidth, so batch 1 "
                f"runs at {fraction:.0%} of it; at that fraction 2x RTX 4090 (tensor parallel, "
                f"all-reduce left out) would decode at about {rtx_ms:.1f} ms/token."
            )
    return lines + [""] + notes


def main(out: Path) -> str:
    check = _load(out / STAGES["check"]) or {}
    others = [_load(out / p) or {} for p in (STAGES["attention"], "bf16/bench.json")]
    device = check.get("device") or next((o["device"] for o in others if "device" in o), "?")
    head = [
        f"## GPU measurement, {datetime.date.today().isoformat()}, {device} (`tools/gpu-measure`)",
        "",
    ]
    body = check_section(out) + [""] + attention_section(out) + [""] + engine_section(out)
    return "\n".join(head + body) + "\n"


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python tools/gpu_summary.py OUT_DIR")
    print(main(Path(sys.argv[1])), end="")
