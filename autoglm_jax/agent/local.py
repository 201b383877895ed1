"""An in-process backend for the agent loop: an `Engine` answers the loop's chat messages, so an
episode needs no HTTP server.

    engine = Engine(ag.load(path), EngineConfig(max_model_len=4096))
    episode = run_episode(phone, instruction, config, backend=EngineBackend(engine, config))

The engine receives exactly what the HTTP client would send (`{"messages": ...}` with PNG data
URIs), rendered by the same chat template as `serve`, with the sampling fields of AgentConfig.
"""

from __future__ import annotations

import dataclasses
import time
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp

from autoglm_jax.agent.loop import AgentConfig, AgentError
from autoglm_jax.engine.sampling import SamplingParams

if TYPE_CHECKING:
    from autoglm_jax.engine import Engine


def sampling_params(config: AgentConfig) -> SamplingParams:
    """AgentConfig's sampling fields (the Open-AutoGLM client's) as engine SamplingParams."""
    return SamplingParams(
        max_tokens=config.max_tokens,
        temperature=config.temperature,
        top_p=config.top_p,
        frequency_penalty=config.frequency_penalty,
    )


def weight_bytes(engine: Engine) -> int:
    """Bytes of the engine's model parameters as deployed: floating-point leaves at 2 bytes
    (bf16), integer (quantized) leaves at their own width; all devices' shards counted once.
    The same count whichever dtype this process computes in, so models compare fairly."""
    return sum(
        x.size * (2 if jnp.issubdtype(x.dtype, jnp.floating) else x.dtype.itemsize)
        for x in jax.tree.leaves(engine.model.params)
    )


@dataclasses.dataclass
class EngineBackend:
    """`backend(messages) -> reply content` over an in-process engine. Counts requests,
    generated tokens and the seconds spent generating (prefill included), for throughput."""

    engine: Engine
    config: AgentConfig = AgentConfig()
    requests: int = 0
    output_tokens: int = 0
    seconds: float = 0.0

    def __call__(self, messages: list[dict[str, Any]]) -> str:
        start = time.perf_counter()
        try:
            [out] = self.engine.generate({"messages": messages}, sampling_params(self.config))
        except ValueError as e:  # a prompt the engine refuses (too long, media it cannot read)
            raise AgentError(f"the engine refused the request: {e}") from None
        self.seconds += time.perf_counter() - start
        if out.error:
            raise AgentError(f"the engine failed the request: {out.error}")
        self.requests += 1
        self.output_tokens += len(out.outputs[0].token_ids)
        return out.outputs[0].text

    @property
    def tokens_per_second(self) -> float:
        return self.output_tokens / self.seconds if self.seconds > 0 else 0.0
