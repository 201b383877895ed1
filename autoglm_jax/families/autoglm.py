"""The AutoGLM composite (`model_type` autoglm, our extension): a GLM decoder (with or without
the GLM-4.1V vision tower) plus a Whisper and/or ViT encoder fused by CGA, cross-modal gated
attention. It has no transformers layout: it is built from Hugging Face parts by
`compose_autoglm` (`ag.load(glm4v_dir, audio_encoder=whisper_dir)`) and saved natively."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import autoglm_jax.sharding as shd
from autoglm_jax.config import ConfigError, FusionConfig, ModelConfig
from autoglm_jax.config.fusion import default_fusion_config
from autoglm_jax.families.family import Family, no_export
from autoglm_jax.families.glm4v import image_inputs
from autoglm_jax.families.keymap import TensorMap
from autoglm_jax.nn.layers import DotGeneral
from autoglm_jax.nn.model import AutoGLM, init_fusion_params


def _no_hf_layout(config: ModelConfig) -> list[TensorMap]:
    raise ConfigError(
        "an autoglm model has no Hugging Face layout: save it with ag.save and "
        "build it from HF parts with ag.load(glm4v_dir, audio_encoder=...)"
    )


def _from_hf(raw: dict[str, Any], source: str) -> ModelConfig:
    raise ConfigError(f"{source}: model_type 'autoglm' is only read from our own format")


def example_inputs(config: ModelConfig) -> tuple[Any, ...]:
    """The glm4v inputs (one image when there is a vision tower) plus one audio window and one
    ViT image for the encoders the composite has."""
    c = config
    audio = (
        jnp.zeros((1, c.audio.num_mel_bins, c.audio.num_frames), jnp.float32)
        if c.audio is not None
        else None
    )
    vit = (
        jnp.zeros((1, c.vit.num_channels, *c.vit.image_size), jnp.float32)
        if c.vit is not None
        else None
    )
    return image_inputs(c) + (audio, vit)


def check(config: ModelConfig, source: str) -> None:
    if config.audio is None and config.vit is None:
        raise ConfigError(
            f"{source}: field `audio`: model_type 'autoglm' needs an [audio] or a "
            "[vit] encoder for fusion"
        )
    if config.audio is not None and config.audio.max_source_positions % config.fusion.audio_stack:
        raise ConfigError(
            f"{source}: field `fusion`: audio_stack ({config.fusion.audio_stack}) "
            f"must divide the audio frames per window "
            f"({config.audio.max_source_positions})"
        )


def _build(config: ModelConfig, dot_general: DotGeneral | None = None) -> AutoGLM:
    return AutoGLM(config, dot_general)


AUTOGLM = Family(
    name="autoglm",
    config_from_hf=_from_hf,
    config_to_hf=no_export("an autoglm model has no transformers class; save it with ag.save"),
    build=_build,
    tensor_maps=_no_hf_layout,
    example_inputs=example_inputs,
    stacks=("text", "fusion"),
    optional_stacks=("vision", "audio", "vit"),
    decoder_path=("language_model",),
    multimodal=True,
    param_stacks={
        "visual": "vision",
        "language_model": "text",
        "audio_encoder": "audio",
        "vit_encoder": "vit",
        "fusion": "fusion",
    },
    check=check,
)


def compose_autoglm(
    base: ModelConfig,
    base_params: Any,
    *,
    audio: tuple[ModelConfig, Any] | None = None,
    vit: tuple[ModelConfig, Any] | None = None,
    fusion: FusionConfig | None = None,
    seed: int = 0,
    mesh: Any = None,
    rules: str = "auto",
    audio_token_id: int | None = None,
) -> tuple[ModelConfig, Any]:
    """An autoglm config and params from a base (glm4v, or glm/glm4 text) model and encoder
    models ((config, params) of model_type whisper / vit). The CGA fusion weights are fresh
    (seeded; gates at zero), so the result equals the base model until trained. `fusion`
    defaults to `default_fusion_config(base.text)`; its dtypes follow the base decoder."""
    if base.model_type not in ("glm", "glm4", "glm4v"):
        raise ConfigError(
            f"the base of an autoglm model must be glm4v, glm or glm4, got {base.model_type!r}"
        )
    for part, want in ((audio, "whisper"), (vit, "vit")):
        if part is not None and part[0].model_type != want:
            raise ConfigError(f"expected a {want} encoder, got model_type {part[0].model_type!r}")
    if audio is None and vit is None:
        raise ConfigError("an autoglm model needs an audio or a ViT encoder")
    text = base.text
    fusion = (fusion or default_fusion_config(text)).replace(
        param_dtype=text.param_dtype, dtype=text.dtype
    )
    cfg = ModelConfig(
        model_type="autoglm",
        text=text,
        vision=base.vision,
        audio=audio[0].audio if audio is not None else None,
        vit=vit[0].vit if vit is not None else None,
        fusion=fusion,
        image_token_id=base.image_token_id,
        image_start_token_id=base.image_start_token_id,
        image_end_token_id=base.image_end_token_id,
        video_token_id=base.video_token_id,
        video_start_token_id=base.video_start_token_id,
        video_end_token_id=base.video_end_token_id,
        audio_token_id=audio_token_id if audio_token_id is not None else base.audio_token_id,
    )
    # a glm/glm4 decoder's params are the whole tree; in the composite they nest like glm4v's
    params = dict(base_params) if base.vision is not None else {"language_model": base_params}
    if audio is not None:
        params["audio_encoder"] = audio[1]
    if vit is not None:
        params["vit_encoder"] = vit[1]
    out_shardings = None
    if mesh is not None:
        boxed = jax.eval_shape(lambda: init_fusion_params(cfg, jax.random.key(0)))
        out_shardings = nn.unbox(shd.param_shardings(boxed, mesh, rules))
    init = jax.jit(lambda key: nn.unbox(init_fusion_params(cfg, key)), out_shardings=out_shardings)
    # The rbg generator compiles about twice as fast as threefry on CPU; values are seeded.
    params["fusion"] = init(jax.random.key(seed, impl="rbg"))
    return cfg, params
