"""The inference engine: scheduler, page allocator, jitted runner, sampling."""

from autoglm_jax.engine.config import EngineConfig
from autoglm_jax.engine.engine import Engine
from autoglm_jax.engine.outputs import CompletionOutput, RequestOutput, StreamDelta
from autoglm_jax.engine.pages import PageAllocator
from autoglm_jax.engine.sampling import SamplingParams
from autoglm_jax.engine.scheduler import QueueFullError

__all__ = [
    "CompletionOutput",
    "Engine",
    "EngineConfig",
    "PageAllocator",
    "QueueFullError",
    "RequestOutput",
    "SamplingParams",
    "StreamDelta",
]
