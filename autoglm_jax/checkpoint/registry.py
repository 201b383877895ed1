"""Architectures that `ag.load` understands: config reader, module builder, tensor maps.

Hugging Face layouts:
  glm, glm4  `model.*`, `lm_head.weight`
  glm4v      `model.visual.*` -> visual, `model.language_model.*` -> language_model,
             `lm_head.weight`
  whisper    `model.encoder.*` (WhisperForConditionalGeneration) or `encoder.*` (WhisperModel);
             the decoder's keys are ignored
  vit        ViTModel keys, or `vit.*` in a ViTForImageClassification (its classifier ignored)
  autoglm    no transformers equivalent: built from a glm4v (or glm/glm4) checkpoint plus encoder
             checkpoints (`compose_autoglm`, `ag.load(..., audio_encoder=...)`), saved natively
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax

from autoglm_jax.checkpoint import glm_keys, vision_keys, vit_keys, whisper_keys
from autoglm_jax.checkpoint.keymap import TensorMap
from autoglm_jax.config import (ConfigError, FusionConfig, ModelConfig, glm4v_config_to_hf,
                                model_config_from_hf, text_config_to_hf)
from autoglm_jax.config.fusion import default_fusion_config


@dataclasses.dataclass(frozen=True)
class Architecture:
    name: str
    config_from_hf: Callable[[dict[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], dict[str, Any]]
    build: Callable[[ModelConfig], nn.Module]
    tensor_maps: Callable[[ModelConfig], list[TensorMap]]
    # Dummy positional inputs for `module.init` (shapes only matter for eval_shape).
    init_args: Callable[[ModelConfig], tuple[Any, ...]]
    # HF keys that belong to parts we do not model (e.g. a Whisper decoder).
    ignored: Callable[[str, ModelConfig], bool] = lambda key, cfg: False


def _build(cfg: ModelConfig) -> nn.Module:
    from autoglm_jax.nn.model import build_module
    return build_module(cfg)


def _init_args(cfg: ModelConfig) -> tuple[Any, ...]:
    from autoglm_jax.nn.model import example_inputs
    return example_inputs(cfg)


def _glm_ignored(key: str, cfg: ModelConfig) -> bool:
    if key.endswith("rotary_emb.inv_freq"):
        return True
    return cfg.text.tie_word_embeddings and key == "lm_head.weight"


def _glm_arch(model_type: str) -> Architecture:
    return Architecture(
        name=model_type,
        config_from_hf=lambda d, src: model_config_from_hf(d, source=src),
        config_to_hf=lambda cfg: text_config_to_hf(cfg.text),
        build=_build,
        tensor_maps=lambda cfg: glm_keys.hf_tensor_maps(cfg.text),
        init_args=_init_args,
        ignored=_glm_ignored,
    )


def glm4v_tensor_maps(cfg: ModelConfig) -> list[TensorMap]:
    """Every tensor of a Glm4vForConditionalGeneration checkpoint."""
    return (vision_keys.hf_tensor_maps(cfg.vision, prefix="model.visual.",
                                       path_prefix=("visual",))
            + glm_keys.hf_tensor_maps(cfg.text, prefix="model.language_model.",
                                      head_key="lm_head.weight",
                                      path_prefix=("language_model",)))


def _whisper_prefix(cfg: ModelConfig) -> str:
    return "encoder." if cfg.hf_architecture == "WhisperModel" else "model.encoder."


def _vit_prefix(cfg: ModelConfig) -> str:
    return "vit." if cfg.hf_architecture == "ViTForImageClassification" else ""


def _no_export(what: str) -> Callable[[ModelConfig], dict[str, Any]]:
    def fail(cfg: ModelConfig) -> dict[str, Any]:
        raise ConfigError(f"export_hf: {what}")
    return fail


def _autoglm_maps(cfg: ModelConfig) -> list[TensorMap]:
    raise ConfigError("an autoglm model has no Hugging Face layout: save it with ag.save and "
                      "build it from HF parts with ag.load(glm4v_dir, audio_encoder=...)")


def _autoglm_from_hf(raw: dict[str, Any], source: str) -> ModelConfig:
    raise ConfigError(f"{source}: model_type 'autoglm' is only read from our own format")


ARCHITECTURES: dict[str, Architecture] = {
    "glm": _glm_arch("glm"),
    "glm4": _glm_arch("glm4"),
    "glm4v": Architecture(
        name="glm4v",
        config_from_hf=lambda d, src: model_config_from_hf(d, source=src),
        config_to_hf=glm4v_config_to_hf,
        build=_build,
        tensor_maps=glm4v_tensor_maps,
        init_args=_init_args,
        ignored=_glm_ignored,
    ),
    "whisper": Architecture(
        name="whisper",
        config_from_hf=lambda d, src: model_config_from_hf(d, source=src),
        config_to_hf=_no_export("a bare Whisper encoder has no transformers class of its own; "
                                "use the original Whisper checkpoint"),
        build=_build,
        tensor_maps=lambda cfg: whisper_keys.hf_tensor_maps(cfg.audio,
                                                            prefix=_whisper_prefix(cfg)),
        init_args=_init_args,
        ignored=lambda key, cfg: whisper_keys.is_ignored(key),
    ),
    "vit": Architecture(
        name="vit",
        config_from_hf=lambda d, src: model_config_from_hf(d, source=src),
        config_to_hf=_no_export("ViT export is not implemented; use the original checkpoint"),
        build=_build,
        tensor_maps=lambda cfg: vit_keys.hf_tensor_maps(cfg.vit, prefix=_vit_prefix(cfg)),
        init_args=_init_args,
        ignored=lambda key, cfg: vit_keys.is_ignored(key),
    ),
    "autoglm": Architecture(
        name="autoglm",
        config_from_hf=_autoglm_from_hf,
        config_to_hf=_no_export("an autoglm model has no transformers class; save it with "
                                "ag.save"),
        build=_build,
        tensor_maps=_autoglm_maps,
        init_args=_init_args,
    ),
}


def register(arch: Architecture) -> None:
    ARCHITECTURES[arch.name] = arch


def get_architecture(model_type: str | None, source: str) -> Architecture:
    if model_type not in ARCHITECTURES:
        raise ConfigError(f"{source}: unsupported model_type {model_type!r} "
                          f"(supported: {sorted(ARCHITECTURES)})")
    return ARCHITECTURES[model_type]


def compose_autoglm(base: ModelConfig, base_params: Any, *,
                    audio: tuple[ModelConfig, Any] | None = None,
                    vit: tuple[ModelConfig, Any] | None = None,
                    fusion: FusionConfig | None = None, seed: int = 0,
                    mesh: Any = None, rules: str = "auto",
                    audio_token_id: int | None = None) -> tuple[ModelConfig, Any]:
    """An autoglm config and params from a base (glm4v, or glm/glm4 text) model and encoder
    models ((config, params) of model_type whisper / vit). The CGA fusion weights are fresh
    (seeded; gates at zero), so the result equals the base model until trained. `fusion`
    defaults to `default_fusion_config(base.text)`; its dtypes follow the base decoder."""
    from autoglm_jax import sharding as shd
    from autoglm_jax.nn.model import init_fusion_params

    if base.model_type not in ("glm", "glm4", "glm4v"):
        raise ConfigError(f"the base of an autoglm model must be glm4v, glm or glm4, "
                          f"got {base.model_type!r}")
    for part, want in ((audio, "whisper"), (vit, "vit")):
        if part is not None and part[0].model_type != want:
            raise ConfigError(f"expected a {want} encoder, got model_type "
                              f"{part[0].model_type!r}")
    if audio is None and vit is None:
        raise ConfigError("an autoglm model needs an audio or a ViT encoder")
    text = base.text
    fusion = (fusion or default_fusion_config(text)).replace(param_dtype=text.param_dtype,
                                                             dtype=text.dtype)
    cfg = ModelConfig(
        model_type="autoglm", text=text, vision=base.vision,
        audio=audio[0].audio if audio is not None else None,
        vit=vit[0].vit if vit is not None else None, fusion=fusion,
        image_token_id=base.image_token_id, image_start_token_id=base.image_start_token_id,
        image_end_token_id=base.image_end_token_id, video_token_id=base.video_token_id,
        video_start_token_id=base.video_start_token_id,
        video_end_token_id=base.video_end_token_id,
        audio_token_id=audio_token_id if audio_token_id is not None else base.audio_token_id)
    params = dict(base_params) if base.model_type == "glm4v" else {"language_model": base_params}
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
