"""tools/gpu_summary.py: the GPU measurement's JSON -> the docs block, on hand-made files."""

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("gpu_summary", ROOT / "tools" / "gpu_summary.py")
gpu_summary = importlib.util.module_from_spec(spec)
spec.loader.exec_module(gpu_summary)


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def test_block_reports_each_stage_and_projects_the_4090(tmp_path):
    row = dict(kernel="decode", heads="32x2x128", kind="GQA 16", kv_dtype="bfloat16", bound=0.02)
    _write(
        tmp_path / "check/check_attention.json",
        dict(
            device="NVIDIA H200", interpret=False, rows=[row | dict(max_abs_error=0.004, ok=True)]
        ),
    )
    decode = dict(mode="decode", batch=1, context=2048, dtype="bfloat16")
    _write(
        tmp_path / "attention/attention.json",
        dict(
            device="NVIDIA H200",
            copy_bandwidth_GBps=3200.0,
            results=[
                decode | dict(impl="pallas_decode", us_per_call=20.0, frac_of_copy_bw=0.5),
                decode | dict(impl="jax_paged_attention", us_per_call=62.0, frac_of_copy_bw=0.16),
                decode | dict(mode="mixed", impl="pallas", us_per_call=1.0, frac_of_copy_bw=1),
            ],
        ),
    )
    run = dict(requests=64, tokens_per_s=3600.0, itl_p50_s=0.009, compilations_during_run=0)
    single = dict(requests=2, tokens_per_s=80.0, itl_p50_s=0.0124, compilations_during_run=0)
    args = dict(model=dict(model="glm-4-9b", dtype="bfloat16", quantize="none"), prompt_len=384)
    _write(
        tmp_path / "bf16/bench.json",
        dict(
            weight_bytes=18.8e9,
            load_s=6.25,
            compile_s=40.0,
            one_at_a_time=single,
            continuous=run,
            args=args | dict(output_len=256),
        ),
    )
    sync_args = args | dict(output_len=256, engine=dict(async_scheduling=False))
    _write(
        tmp_path / "sync/bench.json",
        dict(
            weight_bytes=18.8e9,
            compile_s=1.0,
            one_at_a_time=single | dict(itl_p50_s=0.0131),
            continuous=run | dict(requests=8),
            args=sync_args,
        ),
    )
    (tmp_path / "int8.rc").write_text("124\n")
    (tmp_path / "int8.log").write_text("loading\ncompiling: step shape 3 of 11\n")
    block = gpu_summary.main(tmp_path)
    assert "NVIDIA H200" in block.splitlines()[0]
    assert "1 of 1 cases pass" in block and "| 4.0e-03 | 0.02 | ok |" in block
    assert "| 1 | 2048 | bfloat16 | 20.0 (50%) | 62.0 (16%) |" in block  # mixed rows left out
    assert (
        "| glm-4-9b bfloat16 quantize=none | 18.80 GB | 12.40 ms | 64 x (384 in, 256 out) |"
        " 3600 | 9.00 ms | 6.2 | 40 | 0 |" in block
    )
    # floor 18.8e9 / 3.2e12 = 5.875 ms, 47% of 12.4 ms; a 4090 pair reads 9.4e9 B at 47% of
    # 1008 GB/s: 9.4e9 / (1.008e12 * 0.4738) = 19.7 ms
    assert "floor 5.88 ms" in block and "at 47% of it" in block and "about 19.7 ms/token" in block
    assert "| glm-4-9b bfloat16 quantize=none, async off | 18.80 GB | 13.10 ms | 8 x" in block
    assert "`int8`: no result (timed out; last log line: `compiling: step shape 3 of 11`)" in block
