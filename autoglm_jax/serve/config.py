"""`ServeConfig`: the server's settings, named after vLLM's flags.

`python -m infer serve --model PATH` builds one with tyro (field `max_model_len` becomes the flag
`--max-model-len`). This module imports nothing beyond the standard library, so the CLI can
list the flags without the `serve` extra installed.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """OpenAI-compatible server settings (vLLM's flag names where vLLM has one)."""

    model: str
    """A checkpoint directory (Hugging Face or ours), or `tiny` / `tiny-mm` (with vision and
    audio) for a random-weight smoke run."""
    served_model_name: str | None = None
    """The name clients send as `model` (default: the --model value)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default. Use 0.0.0.0 to serve other machines."""
    port: int = 8000
    tensor_parallel_size: int = 1
    """Devices the weights and KV pages are split over (tensor parallel)."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Weight and compute dtype; auto: bfloat16 on accelerators, float32 on CPU."""
    max_model_len: int | None = None
    """Prompt plus completion tokens per request (default: the model's maximum, capped at 8192)."""
    max_num_batched_tokens: int = 2048
    """Tokens per engine step (prefill chunks and decodes together)."""
    max_num_seqs: int = 64
    """Sequences decoded together."""
    block_size: int = 16
    """Tokens per KV page."""
    num_gpu_blocks_override: int | None = None
    """KV pages to allocate (default: from --kv-cache-memory-bytes)."""
    kv_cache_memory_bytes: int = 2 * 2**30
    """Memory for the KV pages when --num-gpu-blocks-override is not given."""
    enable_chunked_prefill: bool = True
    enable_prefix_caching: bool = True
    kv_cache_dtype: Literal["auto", "bfloat16", "float32", "float16", "int8"] = "auto"
    attention_backend: Literal["auto", "xla", "pallas"] = "auto"
    api_key: str | None = None
    """When set, /v1/* requests need `Authorization: Bearer <api_key>`."""
    allowed_local_media_path: str | None = None
    """Directory whose images requests may name by path or file:// URL (default: none may)."""
    scheduling_policy: Literal["fcfs", "priority"] = "fcfs"
    """fcfs, or priority (requests' `priority` field; lower values run first)."""
    max_waiting_requests: int | None = None
    """Requests that may wait for a slot; more get 429 with Retry-After (default: unbounded)."""
    max_queue_wait: float | None = None
    """Seconds a request may wait for a slot before it fails with 429 (default: forever)."""
    max_request_body_bytes: int = 32 * 2**20
    """Larger request bodies get 413."""
    max_logprobs: int = 20
    """Most top logprobs a request may ask for."""
    seed: int = 0
    """Seed of the random seeds given to requests without one (and of `tiny`'s weights)."""
    warmup: bool = True
    """Compile every step shape before serving, so no request waits for a compilation."""
    compilation_cache_dir: str | None = None
    """JAX persistent compilation cache directory (restarts skip recompiling)."""
    shutdown_timeout: float = 10.0
    """Seconds SIGINT/SIGTERM waits for running requests before aborting them."""
    uvicorn_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model

    def validate(self) -> None:
        """Raise ValueError naming the flag for values the server cannot use."""
        def bad(field: str, why: str) -> None:
            raise ValueError(f"--{field.replace('_', '-')}: {why}")
        for f in ("port", "tensor_parallel_size", "max_num_batched_tokens", "max_num_seqs",
                  "block_size", "max_request_body_bytes", "kv_cache_memory_bytes"):
            if getattr(self, f) < 1:
                bad(f, f"must be positive, got {getattr(self, f)}")
        if self.port > 65535:
            bad("port", f"must be at most 65535, got {self.port}")
        for f in ("max_model_len", "num_gpu_blocks_override"):
            v = getattr(self, f)
            if v is not None and v < 1:
                bad(f, f"must be positive, got {v}")
        if self.max_waiting_requests is not None and self.max_waiting_requests < 0:
            bad("max_waiting_requests", f"must be >= 0, got {self.max_waiting_requests}")
        if self.max_queue_wait is not None and self.max_queue_wait <= 0:
            bad("max_queue_wait", f"must be positive, got {self.max_queue_wait}")
        if self.max_logprobs < 0:
            bad("max_logprobs", f"must be >= 0, got {self.max_logprobs}")
        if self.shutdown_timeout < 0:
            bad("shutdown_timeout", f"must be >= 0, got {self.shutdown_timeout}")
        if self.api_key is not None and not self.api_key:
            bad("api_key", "must not be empty")
