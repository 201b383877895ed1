"""Prometheus metrics in the text exposition format, without prometheus_client.

Names follow vLLM's (`vllm:time_to_first_token_seconds`, `vllm:num_requests_running`, ...), so
dashboards built for vLLM read them; a few `autoglm:` gauges add what vLLM has no name for. The
engine thread records request timings; engine gauges come from its last stats snapshot.
"""

from __future__ import annotations

import bisect
import math
import threading
from typing import Any, Callable, Sequence

TTFT_BUCKETS = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
TPOT_BUCKETS = (
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
LATENCY_BUCKETS = (
    0.3,
    0.5,
    0.8,
    1.0,
    1.5,
    2.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
    960.0,
)


class Histogram:
    def __init__(self, buckets: Sequence[float]):
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1


def _fmt(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if isinstance(v, float) else str(v)


# The engine thread's stats snapshot, exported as is: (name, type, help, stats key, default).
ENGINE_METRICS: tuple[tuple[str, str, str, str, float], ...] = (
    ("vllm:num_requests_running", "gauge", "Requests in the running batch.", "num_running", 0),
    ("vllm:num_requests_waiting", "gauge", "Requests waiting for a slot.", "num_waiting", 0),
    (
        "vllm:kv_cache_usage_perc",
        "gauge",
        "Fraction of KV pages in use (1 = full).",
        "kv_cache_usage",
        0.0,
    ),
    (
        "autoglm:kv_cache_free_pages",
        "gauge",
        "KV pages free or holding evictable cached prefixes.",
        "free_pages",
        0,
    ),
    ("autoglm:kv_cache_pages", "gauge", "KV pages in the pool.", "num_pages", 0),
    (
        "vllm:prefix_cache_queries_total",
        "counter",
        "Prompt tokens looked up in the prefix cache.",
        "prefix_cache_queries",
        0,
    ),
    (
        "vllm:prefix_cache_hits_total",
        "counter",
        "Prompt tokens found in the prefix cache.",
        "prefix_cache_hits",
        0,
    ),
    (
        "autoglm:prefix_cache_hit_rate",
        "gauge",
        "prefix_cache_hits / prefix_cache_queries since start.",
        "prefix_cache_hit_rate",
        0.0,
    ),
    (
        "vllm:num_preemptions_total",
        "counter",
        "Requests preempted (recomputed).",
        "num_preemptions",
        0,
    ),
    (
        "autoglm:xla_compilations",
        "gauge",
        "Distinct step shapes compiled since start (warm-up included).",
        "compilations",
        0,
    ),
    (
        "autoglm:engine_pending_requests",
        "gauge",
        "Requests accepted by the server and not yet handed to the engine.",
        "pending",
        0,
    ),
)


class ServerMetrics:
    """Counters and histograms (written by the engine thread, read by /metrics)."""

    def __init__(self, model_name: str):
        self.model_name = model_name
        self._lock = threading.Lock()
        self.ttft = Histogram(TTFT_BUCKETS)
        self.tpot = Histogram(TPOT_BUCKETS)
        self.e2e = Histogram(LATENCY_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.finished: dict[str, int] = {}
        self.rejected: dict[str, int] = {}  # 429s by reason

    def request_finished(
        self,
        reason: str,
        prompt_tokens: int,
        generation_tokens: int,
        ttft: float | None,
        tpot: float | None,
        e2e: float,
    ) -> None:
        with self._lock:
            self.finished[reason] = self.finished.get(reason, 0) + 1
            self.prompt_tokens += prompt_tokens
            self.generation_tokens += generation_tokens
            if ttft is not None:
                self.ttft.observe(ttft)
            if tpot is not None:
                self.tpot.observe(tpot)
            self.e2e.observe(e2e)

    def request_rejected(self, reason: str) -> None:
        with self._lock:
            self.rejected[reason] = self.rejected.get(reason, 0) + 1

    def render(self, engine_stats: dict[str, Any] | None) -> str:
        """The exposition text. `engine_stats`: the engine thread's snapshot (see
        EngineThread.stats), or None before the engine started."""
        label = f'model_name="{_escape(self.model_name)}"'
        lines: list[str] = []

        def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
            lines.append(f"# HELP {name} {help_}")
            lines.append(f"# TYPE {name} {kind}")
            for suffix_labels, value in samples:
                lines.append(f"{name}{suffix_labels} {_fmt(value)}")

        def hist(name: str, help_: str, h: Histogram) -> None:
            samples = []
            running = 0
            for bound, c in zip(list(h.buckets) + [math.inf], h.counts):
                running += c
                samples.append((f'_bucket{{{label},le="{_fmt(bound)}"}}', running))
            samples.append((f"_sum{{{label}}}", h.sum))
            samples.append((f"_count{{{label}}}", h.count))
            metric(name, "histogram", help_, samples)

        s = engine_stats or {}
        with self._lock:
            for name, kind, help_, key, default in ENGINE_METRICS:
                metric(name, kind, help_, [(f"{{{label}}}", s.get(key, default))])
            metric(
                "vllm:prompt_tokens_total",
                "counter",
                "Prompt tokens of finished requests.",
                [(f"{{{label}}}", self.prompt_tokens)],
            )
            metric(
                "vllm:generation_tokens_total",
                "counter",
                "Generated tokens of finished requests.",
                [(f"{{{label}}}", self.generation_tokens)],
            )
            metric(
                "vllm:request_success_total",
                "counter",
                "Finished requests by finish reason (abort: client gone or shutdown).",
                [
                    (f'{{{label},finished_reason="{r}"}}', n)
                    for r, n in sorted(self.finished.items())
                ]
                or [(f"{{{label}}}", 0)],
            )
            metric(
                "autoglm:requests_rejected_total",
                "counter",
                "Requests answered 429 (queue full or waited too long).",
                [(f'{{{label},reason="{r}"}}', n) for r, n in sorted(self.rejected.items())]
                or [(f"{{{label}}}", 0)],
            )
            hist("vllm:time_to_first_token_seconds", "Time to first token.", self.ttft)
            hist(
                "vllm:time_per_output_token_seconds",
                "Time per output token after the first.",
                self.tpot,
            )
            hist("vllm:e2e_request_latency_seconds", "End-to-end request latency.", self.e2e)
        return "\n".join(lines) + "\n"


def _escape(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def parse_text(text: str) -> dict[str, float]:
    """`name{labels}` -> value for every sample line (for tests and scripts)."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        out[key] = float(value)
    return out


def sample(
    samples: dict[str, float], name: str, match: Callable[[str], bool] = lambda labels: True
) -> float:
    """Sum of the samples of `name` whose label text satisfies `match`."""
    total = 0.0
    for key, v in samples.items():
        n, _, labels = key.partition("{")
        if n == name and match(labels):
            total += v
    return total
