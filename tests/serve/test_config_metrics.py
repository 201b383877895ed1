"""ServeConfig's vLLM flag names (through tyro, as the CLI parses them), its validation, and
the Prometheus text: format, histograms, and what the live server reports."""

from __future__ import annotations

import math
import re

import pytest

from autoglm_jax.serve.config import ServeConfig
from autoglm_jax.serve.metrics import ServerMetrics, parse_text, sample

from .helpers import MODEL

tyro = pytest.importorskip("tyro")


def _parse_serve(argv):
    from infer.serve import ServeArgs

    return tyro.cli(ServeArgs, args=argv, config=(tyro.conf.OmitArgPrefixes,))


def test_vllm_flag_names_parse():
    from autoglm_jax.engine import EngineConfig
    from infer.flags import EngineFlags, ModelFlags

    args = _parse_serve(
        [
            "--model",
            "/ckpt",
            "--served-model-name",
            "autoglm-phone-9b",
            "--host",
            "0.0.0.0",
            "--port",
            "9000",
            "--tensor-parallel-size",
            "2",
            "--max-model-len",
            "4096",
            "--max-num-batched-tokens",
            "1024",
            "--max-num-seqs",
            "32",
            "--enable-chunked-prefill",
            "--no-enable-prefix-caching",
            "--kv-cache-dtype",
            "int8",
            "--api-key",
            "k",
            "--allowed-local-media-path",
            "/data",
            "--warmup-image-sizes",
            "1080x2400",
            "720X1600",
            "--scheduling-policy",
            "priority",
            "--block-size",
            "32",
            "--max-waiting-requests",
            "100",
            "--max-queue-wait",
            "2.5",
            "--num-gpu-blocks-override",
            "77",
        ]
    )
    assert args.server == ServeConfig(
        served_model_name="autoglm-phone-9b",
        host="0.0.0.0",
        port=9000,
        api_key="k",
        allowed_local_media_path="/data",
        warmup_image_sizes=("1080x2400", "720X1600"),
    )
    assert args.server.image_sizes() == [(2400, 1080), (1600, 720)]  # (height, width)
    assert args.model == ModelFlags(model="/ckpt", tensor_parallel_size=2)
    assert args.engine.engine_config() == EngineConfig(
        max_model_len=4096,
        max_num_batched_tokens=1024,
        max_num_seqs=32,
        enable_chunked_prefill=True,
        enable_prefix_caching=False,
        kv_cache_dtype="int8",
        scheduling_policy="priority",
        page_size=32,
        max_waiting_requests=100,
        max_queue_wait=2.5,
        num_pages=77,
    )
    assert args.server.model_name == "autoglm-phone-9b"
    defaults = ServeConfig()
    assert (defaults.host, defaults.port) == ("127.0.0.1", 8000)
    # Every command parses the same engine flags to the same defaults: EngineConfig's.
    assert EngineFlags().engine_config() == EngineConfig()


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"port": 0}, "--port"),
        ({"port": 70000}, "--port"),
        ({"api_key": ""}, "--api-key"),
        ({"warmup_image_sizes": ("1080",)}, "--warmup-image-sizes: '1080'"),
        ({"warmup_image_sizes": ("0x10",)}, "--warmup-image-sizes"),
        ({"warmup_image_sizes": ("ax10",)}, "--warmup-image-sizes"),
    ],
)
def test_validation_names_the_flag(change, flag):
    with pytest.raises(ValueError, match=flag):
        ServeConfig(**change).validate()


@pytest.mark.parametrize(
    "change,flag",
    [
        ({"max_num_seqs": 0}, "--max-num-seqs"),
        ({"max_model_len": 0}, "--max-model-len"),
        ({"max_queue_wait": 0.0}, "--max-queue-wait"),
        ({"block_size": 0}, "--block-size"),
        ({"max_waiting_requests": -1}, "--max-waiting-requests"),
        ({"num_gpu_blocks_override": 0}, "--num-gpu-blocks-override"),
    ],
)
def test_engine_flag_validation_names_the_flag(change, flag):
    import dataclasses

    from infer.flags import EngineFlags

    with pytest.raises(SystemExit, match=flag):
        dataclasses.replace(EngineFlags(), **change).engine_config()


def test_prometheus_text_histograms_are_cumulative():
    m = ServerMetrics('tiny "q"')
    for ttft in (0.003, 0.3, 3.0, 300.0):
        m.request_finished("length", 10, 5, ttft, 0.02, ttft + 0.1)
    m.request_finished("abort", 4, 0, None, None, 0.01)
    text = m.render({"num_running": 2, "num_waiting": 1, "kv_cache_usage": 0.25})
    sample_line = re.compile(
        r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-z_]+="([^"\\]|\\.)*",?)*\})? '
        r"(-?[0-9.e+-]+|\+Inf)$"
    )
    for line in text.splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or sample_line.match(line), line
    samples = parse_text(text)
    label = 'model_name="tiny \\"q\\""'
    buckets = [
        (k, v)
        for k, v in samples.items()
        if k.startswith("vllm:time_to_first_token_seconds_bucket")
    ]
    values = [v for _, v in buckets]
    assert values == sorted(values) and values[-1] == 4 and 'le="+Inf"' in buckets[-1][0]
    assert samples[f"vllm:time_to_first_token_seconds_count{{{label}}}"] == 4
    assert math.isclose(samples[f"vllm:time_to_first_token_seconds_sum{{{label}}}"], 303.303)
    assert sample(samples, "vllm:request_success_total", lambda s: "abort" in s) == 1
    assert sample(samples, "vllm:request_success_total") == 5
    assert samples[f"vllm:num_requests_running{{{label}}}"] == 2
    assert samples[f"vllm:prompt_tokens_total{{{label}}}"] == 44


def test_live_metrics_count_requests(server):
    before = server.metrics()
    for _ in range(2):
        r = server.post(
            "/v1/chat/completions",
            {
                "model": MODEL,
                "max_tokens": 3,
                "messages": [{"role": "user", "content": "x"}],
                "ignore_eos": True,
            },
        )
        assert r.status_code == 200
    r = server.http.get("/metrics")
    assert r.headers["content-type"].startswith("text/plain")
    after = parse_text(r.text)
    for name, grew in [
        ("vllm:time_to_first_token_seconds_count", 2),
        ("vllm:time_per_output_token_seconds_count", 2),
        ("vllm:e2e_request_latency_seconds_count", 2),
        ("vllm:generation_tokens_total", 6),
    ]:
        assert sample(after, name) - sample(before, name) == grew, name
    for name in (
        "vllm:num_requests_running",
        "vllm:num_requests_waiting",
        "vllm:kv_cache_usage_perc",
        "vllm:prefix_cache_hits_total",
        "vllm:prefix_cache_queries_total",
        "autoglm:prefix_cache_hit_rate",
    ):
        assert any(k.startswith(name + "{") for k in after), name
