"""`ServeConfig`: the HTTP server's own settings, named after vLLM's flags.

The engine's settings are `EngineConfig`'s and the model's are the CLI's (`python -m infer
serve` combines the three into one flat set of flags). This module imports nothing beyond the
standard library, so the CLI can list the flags without the `serve` extra installed.
"""

from __future__ import annotations

import dataclasses
from typing import Literal


@dataclasses.dataclass(frozen=True)
class ServeConfig:
    """OpenAI-compatible server settings (vLLM's flag names where vLLM has one)."""

    served_model_name: str | None = None
    """The name clients send as `model` (default: the --model value)."""
    host: str = "127.0.0.1"
    """Interface to bind; loopback by default. Use 0.0.0.0 to serve other machines."""
    port: int = 8000
    api_key: str | None = None
    """When set, /v1/* requests need `Authorization: Bearer <api_key>`."""
    allowed_local_media_path: str | None = None
    """Directory whose images requests may name by path or file:// URL (default: none may)."""
    max_request_body_bytes: int = 32 * 2**20
    """Larger request bodies get 413."""
    warmup: bool = True
    """Compile every step shape before listening, so no request waits for a compilation."""
    warmup_image_sizes: tuple[str, ...] = ()
    """Image sizes, WIDTHxHEIGHT (e.g. 1080x2400), for which warm-up also compiles the vision
    tower (a request with one image of that size). A phone's screenshots are all one size, so
    an agent's first request then waits for no compilation; other sizes compile when met."""
    shutdown_timeout: float = 10.0
    """Seconds SIGINT/SIGTERM waits for running requests before aborting them."""
    uvicorn_log_level: Literal["critical", "error", "warning", "info", "debug", "trace"] = "info"

    @property
    def model_name(self) -> str:
        return self.served_model_name or "default"

    def validate(self) -> None:
        """Raise ValueError naming the flag for values the server cannot use."""

        def bad(field: str, why: str) -> None:
            raise ValueError(f"--{field.replace('_', '-')}: {why}")

        for f in ("port", "max_request_body_bytes"):
            if getattr(self, f) < 1:
                bad(f, f"must be positive, got {getattr(self, f)}")
        if self.port > 65535:
            bad("port", f"must be at most 65535, got {self.port}")
        if self.shutdown_timeout < 0:
            bad("shutdown_timeout", f"must be >= 0, got {self.shutdown_timeout}")
        if self.api_key is not None and not self.api_key:
            bad("api_key", "must not be empty")
        self.image_sizes()

    def image_sizes(self) -> list[tuple[int, int]]:
        """`warmup_image_sizes` as (height, width) pairs; ValueError naming the flag."""
        out = []
        for text in self.warmup_image_sizes:
            width, x, height = text.lower().partition("x")
            if not (x and width.isdigit() and height.isdigit() and int(width) and int(height)):
                raise ValueError(
                    f"--warmup-image-sizes: {text!r} is not WIDTHxHEIGHT in pixels (e.g. 1080x2400)"
                )
            out.append((int(height), int(width)))
        return out
