"""`EngineConfig`: the engine's settings, which are also the CLI's engine flags (`infer.flags`
derives them from this class, with vLLM's names)."""

from __future__ import annotations

import dataclasses
from typing import Literal

DEFAULT_MAX_MODEL_LEN = 8192  # the cap on a model's own context when max_model_len is None


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """Engine settings. The field docs are also the CLI's help: `python -m infer` derives its
    engine flags from this class (with vLLM's names: `page_size` is `--block-size`,
    `num_pages` is `--num-gpu-blocks-override`)."""

    max_num_seqs: int = 64
    """Sequences decoded together."""
    max_num_batched_tokens: int = 2048
    """Token budget of one engine step (decode tokens and prefill chunks together)."""
    page_size: int = 16
    """Tokens per KV page."""
    max_model_len: int | None = None
    """Prompt plus completion tokens per request (default: the model's maximum, at most 8192)."""
    enable_prefix_caching: bool = True
    """Reuse KV pages of shared prompt prefixes."""
    enable_chunked_prefill: bool = True
    """Split long prompts across steps."""
    kv_cache_dtype: Literal["auto", "bfloat16", "float32", "float16", "int8"] = "auto"
    """KV page storage: auto is the model's compute dtype (float32 on CPU); int8 halves
    bfloat16's bytes (per-token, per-head scales)."""
    num_pages: int | None = None
    """KV pages to allocate (default: from kv_cache_memory_bytes, at most what max_num_seqs
    full-length sequences need)."""
    kv_cache_memory_bytes: int = 2 * 2**30
    """Memory for the KV pages when num_pages is not given."""
    attention_backend: Literal["auto", "xla", "pallas"] = "auto"
    """Attention implementation (auto: Pallas on GPU, XLA elsewhere)."""
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """fcfs, or priority (lower values run first)."""
    max_waiting_requests: int | None = None
    """Requests that may wait for a slot; more are refused (default: unbounded)."""
    max_queue_wait: float | None = None
    """Seconds a request may wait for a slot before it fails (default: forever)."""
    max_logprobs: int = 20
    """Most top logprobs a request may ask for."""
    async_scheduling: bool = True
    """Schedule and dispatch step n+1 while step n runs, feeding its sampled tokens back on
    the device (as vLLM's --async-scheduling); a request that stops at step n has one extra
    sample, dropped. Off: each step waits for its tokens before the next is scheduled."""
    seed: int = 0
    """Seed of the random seeds given to requests without one."""

    def validate(self) -> None:
        def bad(field: str, why: str) -> None:
            raise ValueError(f"EngineConfig.{field}: {why}")

        for f in (
            "max_num_seqs",
            "max_num_batched_tokens",
            "page_size",
            "max_model_len",
            "num_pages",
            "kv_cache_memory_bytes",
        ):
            if getattr(self, f) is not None and getattr(self, f) < 1:
                bad(f, f"must be positive, got {getattr(self, f)}")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            bad("max_waiting_requests", f"must be >= 0, got {self.max_waiting_requests}")
        if self.max_queue_wait is not None and self.max_queue_wait <= 0:
            bad("max_queue_wait", f"must be positive, got {self.max_queue_wait}")
        if self.max_logprobs < 0:
            bad("max_logprobs", f"must be >= 0, got {self.max_logprobs}")
        if self.kv_cache_dtype not in ("auto", "bfloat16", "float32", "float16", "int8"):
            bad(
                "kv_cache_dtype",
                f"must be auto, bfloat16, float32, float16 or int8, got {self.kv_cache_dtype!r}",
            )
        if self.attention_backend not in ("auto", "xla", "pallas"):
            bad("attention_backend", f"must be auto, xla or pallas, got {self.attention_backend!r}")
        if self.scheduling_policy not in ("fcfs", "priority"):
            bad("scheduling_policy", f"must be fcfs or priority, got {self.scheduling_policy!r}")
        if (
            not self.enable_chunked_prefill
            and self.max_model_len is not None
            and self.max_num_batched_tokens < self.max_model_len
        ):
            bad(
                "max_num_batched_tokens",
                "without chunked prefill it must be at least "
                "max_model_len so every prompt fits in one step",
            )
