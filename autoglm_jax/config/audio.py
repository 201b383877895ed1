"""Whisper audio encoder configuration (the encoder half of `model_type: whisper`)."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from autoglm_jax.config._common import DTYPES, check

# The log-mel front end is fixed by Whisper: 16 kHz audio, hop 160 samples, so one input frame
# is 10 ms and the encoder's 2 * max_source_positions frames cover 30 s.
_SAMPLE_RATE = 16000
_HOP_LENGTH = 160


@dataclasses.dataclass(frozen=True)
class AudioConfig:
    """The Whisper encoder: two conv stems (the second halves time), stored positions,
    `num_layers` pre-LayerNorm blocks and a final LayerNorm.

    `max_audio_seconds` bounds how much audio one request may carry: longer audio is split into
    `window_seconds` (30 s) windows, each encoded separately, at most `max_windows` of them.
    """

    d_model: int
    num_layers: int
    num_heads: int
    ffw_dim: int
    num_mel_bins: int = 80
    max_source_positions: int = 1500
    layer_norm_eps: float = 1e-5
    max_audio_seconds: float = 120.0
    param_dtype: str = "float32"
    dtype: str = "float32"  # compute dtype of activations

    def __post_init__(self) -> None:
        self.validate("AudioConfig")

    def validate(self, source: str) -> None:
        for name in (
            "d_model",
            "num_layers",
            "num_heads",
            "ffw_dim",
            "num_mel_bins",
            "max_source_positions",
        ):
            value = getattr(self, name)
            check(
                isinstance(value, int) and not isinstance(value, bool) and value > 0,
                source,
                name,
                f"must be a positive integer, got {value!r}",
            )
        check(
            self.d_model % self.num_heads == 0,
            source,
            "num_heads",
            f"d_model ({self.d_model}) must be a multiple of num_heads ({self.num_heads})",
        )
        # The sinusoid table concatenates sin and cos halves with increment ln(1e4)/(d/2 - 1).
        check(
            self.d_model % 2 == 0 and self.d_model >= 4,
            source,
            "d_model",
            f"must be even and at least 4 (sinusoidal positions), got {self.d_model}",
        )
        check(
            self.layer_norm_eps > 0,
            source,
            "layer_norm_eps",
            f"must be positive, got {self.layer_norm_eps}",
        )
        check(
            self.max_audio_seconds > 0,
            source,
            "max_audio_seconds",
            f"must be positive, got {self.max_audio_seconds}",
        )
        for name in ("param_dtype", "dtype"):
            check(
                getattr(self, name) in DTYPES,
                source,
                name,
                f"must be one of {DTYPES}, got {getattr(self, name)!r}",
            )

    # Derived sizes.
    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def num_frames(self) -> int:
        """Mel frames one window must have (conv2 has stride 2): 3000 for Whisper."""
        return 2 * self.max_source_positions

    @property
    def window_seconds(self) -> float:
        """Audio covered by one encoder window: 30.0 for Whisper."""
        return self.num_frames * _HOP_LENGTH / _SAMPLE_RATE

    @property
    def max_windows(self) -> int:
        """How many windows `encode_long` accepts (ceil(max_audio_seconds / window_seconds))."""
        return max(1, math.ceil(self.max_audio_seconds / self.window_seconds - 1e-9))

    @property
    def num_params(self) -> int:
        """Parameter count computed from the sizes (checked against eval_shape in tests)."""
        d, f, m = self.d_model, self.ffw_dim, self.num_mel_bins
        stems = 3 * m * d + d + 3 * d * d + d
        attn = 4 * d * d + 3 * d  # q, v and out have biases; k has none
        layer = attn + 2 * d * f + f + d + 4 * d  # fc1, fc2, two LayerNorms
        return stems + self.max_source_positions * d + self.num_layers * layer + 2 * d

    def replace(self, **changes: Any) -> "AudioConfig":
        return dataclasses.replace(self, **changes)


# openai/whisper-tiny's encoder: 8,208,384 parameters.
WHISPER_TINY = AudioConfig(d_model=384, num_layers=4, num_heads=6, ffw_dim=1536)
