"""Tiny random Hugging Face GLM models saved with save_pretrained: the parity references."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np


@dataclasses.dataclass(frozen=True)
class GlmCase:
    name: str
    model_type: str  # glm | glm4
    num_heads: int
    num_kv_heads: int
    partial_rotary_factor: float
    rope_theta: float = 10000.0
    hidden_size: int = 40
    intermediate_size: int = 37
    head_dim: int = 12
    vocab_size: int = 97
    layers: int = 2
    tie: bool = False
    attention_bias: bool = True
    rms_norm_eps: float = 1e-5


CASES = [
    GlmCase("glm-gqa-half-rope", "glm", 4, 2, 0.5),
    GlmCase(
        "glm-mha-full-rope-theta",
        "glm",
        3,
        3,
        1.0,
        rope_theta=500000.0,
        hidden_size=33,
        intermediate_size=29,
        head_dim=8,
    ),
    GlmCase("glm-mqa-half-rope", "glm", 5, 1, 0.5, rope_theta=5e6, head_dim=16),
    GlmCase("glm4-gqa-full-rope", "glm4", 4, 2, 1.0, rope_theta=20000.0),
    GlmCase("glm4-mqa-half-tied", "glm4", 6, 1, 0.5, hidden_size=30, head_dim=8, tie=True),
    # Every other field the modeling code reads, at a non-default value.
    GlmCase(
        "glm-no-bias-eps",
        "glm",
        4,
        4,
        0.25,
        head_dim=16,
        attention_bias=False,
        rms_norm_eps=1e-2,
        layers=3,
    ),
    GlmCase(
        "glm4-no-bias-eps", "glm4", 2, 1, 0.75, head_dim=8, attention_bias=False, rms_norm_eps=1e-3
    ),
]


def make_hf_model(case: GlmCase, seed: int = 0):
    import torch
    import transformers as tf

    torch.manual_seed(seed)
    cls, cfg_cls = (
        (tf.GlmForCausalLM, tf.GlmConfig)
        if case.model_type == "glm"
        else (tf.Glm4ForCausalLM, tf.Glm4Config)
    )
    cfg = cfg_cls(
        vocab_size=case.vocab_size,
        hidden_size=case.hidden_size,
        intermediate_size=case.intermediate_size,
        num_hidden_layers=case.layers,
        num_attention_heads=case.num_heads,
        num_key_value_heads=case.num_kv_heads,
        head_dim=case.head_dim,
        partial_rotary_factor=case.partial_rotary_factor,
        rope_theta=case.rope_theta,
        pad_token_id=0,
        tie_word_embeddings=case.tie,
        rms_norm_eps=case.rms_norm_eps,
        attention_bias=case.attention_bias,
    )
    model = cls(cfg).eval()
    # Random init leaves norms at 1 and biases at 0; perturb them so a swapped norm or a
    # dropped bias cannot pass unnoticed.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                p.add_(0.1 * torch.randn_like(p))
    return model


def save_hf_model(case: GlmCase, directory: Path, **save_kwargs):
    model = make_hf_model(case)
    model.save_pretrained(directory, **save_kwargs)
    return model


def hf_logits(model, ids: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.tensor(ids)).logits.float().numpy()
