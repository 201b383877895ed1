"""The GLM-4.1V model (`Glm4vModel`, model_type glm4v) and the AutoGLM composite (`AutoGLM`,
model_type autoglm): encoders + GLM decoder + CGA fusion.

Both take transformers' processed inputs:

    logits = module.apply({"params": p}, input_ids, pixel_values=pv, image_grid_thw=thw)

input_ids i32[B, T] already expanded (one `<|image|>` per vision token, see
`processing.prompt.expand_image_placeholders`); pixel_values f32[P, 1176] of all images of the
batch in order; image_grid_thw [n, 3] concrete (host numpy or tuples: it fixes static shapes).
M-RoPE positions come from `processing.prompt.get_rope_index` when not given, which needs
concrete input_ids (and attention_mask): under `jax.jit` compute them on the host and pass
`positions=` (i32[3, B, T]). attention_mask i32/bool[B, T] (0 = padding) handles left padding.
In decode, a generated token at sequence index i has position i + delta on all three rows
(`get_rope_index` returns the deltas); the decoder also accepts plain [B, T] positions.

The composite adds `input_features` f32[A, mels, 3000] (Whisper windows) with `audio_rows`
i32[A] (the batch row of each window, -1 for none; default one per row, or all to row 0 for a
batch of one) and `vit_pixel_values` f32[I, 3, H, W] with `vit_rows`. For serving, encode the
memory once per request (`request_memory`, or `encode_memory` + `memory_kv`) and pass
`memory=` to every step; an engine keeps one row per sequence slot (`memory_pool`,
`MemoryKV.with_row`) and embeds each step's tokens with `embed_step`.

Param tree (HF names in `families/glm4v.py`): visual (Glm4vVisionTower), language_model
(GlmDecoder), audio_encoder (WhisperEncoder), vit_encoder (ViTEncoder), fusion (CgaFusion).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config import ModelConfig
from autoglm_jax.nn.attention import AttentionBackend
from autoglm_jax.nn.audio import WhisperEncoder
from autoglm_jax.nn.fusion import CgaFusion, Memory, MemoryKV
from autoglm_jax.nn.glm import GlmDecoder
from autoglm_jax.nn.layers import DotGeneral
from autoglm_jax.nn.quantized import QuantizedWeights
from autoglm_jax.nn.vision import Glm4vVisionTower, grid_tuple
from autoglm_jax.nn.vit import ViTEncoder
from autoglm_jax.processing.prompt import get_rope_index, splice_embeddings

Array = jax.Array


def _concrete(x: Any) -> np.ndarray | None:
    if x is None or isinstance(x, jax.core.Tracer):
        return None
    return np.asarray(x)


class Glm4vModel(nn.Module):
    """GLM-4.1V (transformers' Glm4vForConditionalGeneration): ids + images -> logits."""

    config: ModelConfig
    dot_general: DotGeneral | None = None

    def setup(self) -> None:
        c = self.config
        if c.vision is not None:
            self.visual = Glm4vVisionTower(c.vision, dot_general=self.encoder_dot_general())
        self.language_model = GlmDecoder(c.text, self.dot_general)

    def encoder_dot_general(self) -> Any:
        """What the encoders and the fusion multiply with: the model's dot_general, or, for a
        checkpoint stored quantized with scope "all", the integer weights' policy (the decoder
        builds its own from the same `text.quant`)."""
        quant = self.config.text.quant if self.config.text is not None else None
        if quant is None or quant.scope != "all":
            return self.dot_general
        return QuantizedWeights(
            quant, decoder_path=self.path + ("language_model",), inner=self.dot_general
        )

    def embed_inputs(
        self, input_ids: Array, pixel_values: Array | None = None, image_grid_thw: Any = None
    ) -> Array:
        """Token embeddings [B, T, D] with the image embeddings spliced at the image tokens."""
        c = self.config
        x = self.language_model.embed(input_ids)
        if pixel_values is None:
            return x
        if c.vision is None:
            raise ValueError("this model has no vision tower (pixel_values given)")
        if image_grid_thw is None:
            raise ValueError("pixel_values needs image_grid_thw")
        ids = _concrete(input_ids)
        if ids is not None:
            n = int((ids == c.image_token_id).sum())
            want = sum(t * h * w for t, h, w in grid_tuple(image_grid_thw)) // c.vision.merge_factor
            if n != want:
                raise ValueError(
                    f"image features and image tokens do not match: input_ids hold {n} image "
                    f"tokens ({c.image_token_id}), the images give {want} "
                    "(expand the placeholders with expand_image_placeholders)"
                )
        image_embeds = self.visual(pixel_values, image_grid_thw)
        return splice_embeddings(x, image_embeds, input_ids, c.image_token_id)

    def embed_step(
        self, input_ids: Array, image_rows: Array | None = None, image_index: Array | None = None
    ) -> Array:
        """Token embeddings [B, T, D] of a serving step, with already encoded image rows
        image_rows [R, D] spliced in: image_index i32[B, T] is each token's row, -1 for a
        text token. The engine encodes a request's images once and feeds them chunk by chunk,
        so rows are given by index, not matched to image tokens (`embed_inputs`)."""
        x = self.language_model.embed(input_ids)
        if image_rows is None:
            return x
        rows = image_rows[jnp.maximum(image_index, 0)].astype(x.dtype)
        return jnp.where((image_index >= 0)[..., None], rows, x)

    def mrope_positions(
        self, input_ids: Any, image_grid_thw: Any = None, attention_mask: Any = None
    ) -> np.ndarray:
        """i32[3, B, T] M-RoPE positions computed on the host (`get_rope_index`)."""
        c = self.config
        ids = _concrete(input_ids)
        mask = _concrete(attention_mask)
        if ids is None or (attention_mask is not None and mask is None):
            raise TypeError(
                "M-RoPE positions are computed on the host from input_ids (and "
                "attention_mask), which are traced here: under jax.jit compute them with "
                "autoglm_jax.processing.prompt.get_rope_index and pass positions="
            )
        merge = c.vision.spatial_merge_size if c.vision is not None else 2
        positions, _ = get_rope_index(
            ids,
            image_grid_thw,
            mask,
            image_token_id=c.image_token_id if c.image_token_id is not None else -1,
            video_start_token_id=(
                c.video_start_token_id if c.video_start_token_id is not None else -1
            ),
            video_end_token_id=c.video_end_token_id if c.video_end_token_id is not None else -1,
            spatial_merge_size=merge,
        )
        return positions

    def _decode(
        self,
        input_ids: Array | None,
        positions: Array | None,
        pixel_values: Array | None,
        image_grid_thw: Any,
        attention_mask: Array | None,
        inputs_embeds: Array | None,
        segment_ids: Array | None,
        attention: AttentionBackend | None,
        kv_caches: Any,
        logits_indices: Array | None,
        return_hidden: bool,
        layer_hook: Any,
    ) -> Any:
        if inputs_embeds is None:
            if input_ids is None:
                raise ValueError("pass input_ids or inputs_embeds")
            inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grid_thw)
        elif pixel_values is not None:
            raise ValueError(
                "pixel_values are spliced at the image tokens of input_ids; "
                "with inputs_embeds, splice them yourself"
            )
        if (
            positions is None
            and input_ids is not None
            and (image_grid_thw is not None or attention_mask is not None)
        ):
            positions = jnp.asarray(self.mrope_positions(input_ids, image_grid_thw, attention_mask))
        if attention_mask is not None:
            keep = jnp.asarray(attention_mask).astype(bool)
            segment_ids = (
                keep.astype(jnp.int32)
                if segment_ids is None
                else jnp.where(keep, segment_ids + 1, 0)
            )
        return self.language_model(
            None,
            positions,
            inputs_embeds=inputs_embeds,
            segment_ids=segment_ids,
            attention=attention,
            kv_caches=kv_caches,
            logits_indices=logits_indices,
            layer_hook=layer_hook,
            return_hidden=return_hidden,
        )

    def __call__(
        self,
        input_ids: Array | None = None,
        positions: Array | None = None,
        pixel_values: Array | None = None,
        image_grid_thw: Any = None,
        *,
        attention_mask: Array | None = None,
        inputs_embeds: Array | None = None,
        segment_ids: Array | None = None,
        attention: AttentionBackend | None = None,
        kv_caches: Any = None,
        logits_indices: Array | None = None,
        return_hidden: bool = False,
    ) -> Any:
        """Logits f32[B, T, V] (the decoder's outputs; see GlmDecoder for the keyword
        arguments, which the engine uses as with a text model)."""
        return self._decode(
            input_ids,
            positions,
            pixel_values,
            image_grid_thw,
            attention_mask,
            inputs_embeds,
            segment_ids,
            attention,
            kv_caches,
            logits_indices,
            return_hidden,
            None,
        )


class AutoGLM(Glm4vModel):
    """The composite: GLM-4.1V (or a GLM text decoder) + Whisper audio and/or ViT encoders,
    fused by CGA blocks after every `fusion.cga_every` decoder layers."""

    def setup(self) -> None:
        super().setup()
        c = self.config
        if c.audio is not None:
            self.audio_encoder = WhisperEncoder(c.audio, self.encoder_dot_general())
        if c.vit is not None:
            self.vit_encoder = ViTEncoder(c.vit, self.encoder_dot_general())
        self.fusion = CgaFusion(c, self.encoder_dot_general())

    def encode_memory(
        self,
        num_rows: int,
        input_features: Array | None = None,
        audio_rows: Any = None,
        vit_pixel_values: Array | None = None,
        vit_rows: Any = None,
        *,
        max_audio_per_row: int | None = None,
        max_vit_per_row: int | None = None,
        audio_frames: Any = None,
    ) -> Memory:
        """Run the encoders and projectors: a Memory with `num_rows` rows. audio_frames
        i32[A]: real mel frames per audio window (None: the whole window is attended)."""
        c = self.config
        audio_hidden = vit_hidden = None
        if input_features is not None:
            if c.audio is None:
                raise ValueError("this model has no audio encoder (input_features given)")
            audio_hidden = self.audio_encoder(input_features)
        if vit_pixel_values is not None:
            if c.vit is None:
                raise ValueError("this model has no ViT encoder (vit_pixel_values given)")
            vit_hidden = self.vit_encoder(vit_pixel_values)[0]
        return self.fusion.memory(
            num_rows,
            audio_hidden,
            audio_rows,
            vit_hidden,
            vit_rows,
            max_audio_per_row=max_audio_per_row,
            max_vit_per_row=max_vit_per_row,
            audio_frames=audio_frames,
        )

    def memory_kv(self, memory: Memory) -> MemoryKV:
        return self.fusion.memory_kv(memory)

    def request_memory(self, input_features: Array, audio_frames: Array) -> MemoryKV:
        """One request's CGA memory K/V (R = 1) from its audio windows f32[W, mels, 3000]
        and their real frames i32[W], laid out for `audio.max_windows` windows so that every
        request's memory has one shape (a row of the engine's pool, `MemoryKV.with_row`)."""
        memory = self.encode_memory(
            1,
            input_features,
            max_audio_per_row=self.config.audio.max_windows,
            audio_frames=audio_frames,
        )
        return self.memory_kv(memory)

    def __call__(
        self,
        input_ids: Array | None = None,
        positions: Array | None = None,
        pixel_values: Array | None = None,
        image_grid_thw: Any = None,
        input_features: Array | None = None,
        vit_pixel_values: Array | None = None,
        *,
        audio_rows: Any = None,
        vit_rows: Any = None,
        max_audio_per_row: int | None = None,
        max_vit_per_row: int | None = None,
        audio_frames: Any = None,
        memory: MemoryKV | None = None,
        memory_rows: Array | None = None,
        attention_mask: Array | None = None,
        inputs_embeds: Array | None = None,
        segment_ids: Array | None = None,
        attention: AttentionBackend | None = None,
        kv_caches: Any = None,
        logits_indices: Array | None = None,
        return_hidden: bool = False,
    ) -> Any:
        """Logits f32[B, T, V]. Audio/ViT inputs (or a precomputed `memory`) feed the CGA
        blocks; without them the model is exactly its base decoder. `audio_frames` i32[A]
        (real mel frames per audio window, `processing.audio.window_frames`) keeps the blocks
        off each window's padding. `memory_rows` i32[B, T]
        maps each token to a memory row (flat token batches of several requests)."""
        if memory is None and (input_features is not None or vit_pixel_values is not None):
            ref = input_ids if input_ids is not None else inputs_embeds
            memory = self.memory_kv(
                self.encode_memory(
                    ref.shape[0],
                    input_features,
                    audio_rows,
                    vit_pixel_values,
                    vit_rows,
                    max_audio_per_row=max_audio_per_row,
                    max_vit_per_row=max_vit_per_row,
                    audio_frames=audio_frames,
                )
            )
        hook = None
        if memory is not None:
            fusion_cfg = self.config.fusion

            def hook(i: int, h: Array) -> Array:
                j = fusion_cfg.block_after_layer(i)
                return h if j is None else self.fusion.apply_block(j, h, memory, memory_rows)

        return self._decode(
            input_ids,
            positions,
            pixel_values,
            image_grid_thw,
            attention_mask,
            inputs_embeds,
            segment_ids,
            attention,
            kv_caches,
            logits_indices,
            return_hidden,
            hook,
        )


class ViTModel(nn.Module):
    """ViTEncoder that returns only the last hidden state [B, 1 + P, D] (the vit family); the
    params are the encoder's own (no extra nesting)."""

    config: Any  # ViTConfig
    dot_general: DotGeneral | None = None

    def setup(self) -> None:
        self.encoder = ViTEncoder(self.config, self.dot_general)
        nn.share_scope(self, self.encoder)

    def __call__(self, pixel_values: Array) -> Array:
        return self.encoder(pixel_values)[0]


def init_fusion_params(config: ModelConfig, key: Array) -> Any:
    """Fresh (boxed) CGA fusion params for `config` (gates at zero), without initialising
    the encoders or the decoder."""
    c = config
    d = c.text.d_model
    audio = (
        jnp.zeros((1, c.audio.max_source_positions, c.audio.d_model), jnp.float32)
        if c.audio is not None
        else None
    )
    vit = jnp.zeros((1, c.vit.seq_len, c.vit.d_model), jnp.float32) if c.vit is not None else None
    return CgaFusion(c).init(key, jnp.zeros((1, 1, d), jnp.float32), audio, vit)["params"]


def encode_memory(
    config: ModelConfig,
    params: Any,
    num_rows: int,
    input_features: Array | None = None,
    audio_rows: Any = None,
    vit_pixel_values: Array | None = None,
    vit_rows: Any = None,
    *,
    max_audio_per_row: int | None = None,
    max_vit_per_row: int | None = None,
    audio_frames: Any = None,
) -> Memory:
    """Encoders + projectors of an autoglm model (params: the whole model's tree)."""
    return AutoGLM(config).apply(
        {"params": params},
        num_rows,
        input_features,
        audio_rows,
        vit_pixel_values,
        vit_rows,
        max_audio_per_row=max_audio_per_row,
        max_vit_per_row=max_vit_per_row,
        audio_frames=audio_frames,
        method="encode_memory",
    )


def memory_kv(config: ModelConfig, params: Any, memory: Memory) -> MemoryKV:
    """Every CGA block's (k, v) of a memory: run once per request, pass as `memory=` to the
    forward at every step. params: the whole model's tree (only params["fusion"] is read)."""
    # through the composite, so a quantized fusion (scope "all") finds its policy and paths
    return AutoGLM(config).apply({"params": params}, memory, method="memory_kv")


def request_memory(
    config: ModelConfig, params: Any, input_features: Array, audio_frames: Array
) -> MemoryKV:
    """`AutoGLM.request_memory` with the whole model's params: run once per request."""
    return AutoGLM(config).apply(
        {"params": params}, input_features, audio_frames, method="request_memory"
    )


def memory_pool(config: ModelConfig, params: Any, num_slots: int) -> MemoryKV:
    """An empty per-slot CGA memory pool (R = num_slots, every slot invalid) for an engine
    that serves `config`'s audio: each row has the shape of one `request_memory`."""
    a = config.audio
    one = jax.eval_shape(
        lambda p: request_memory(
            config,
            p,
            jnp.zeros((1, a.num_mel_bins, a.num_frames), jnp.float32),
            jnp.full((1,), a.num_frames, jnp.int32),
        ),
        params,
    )
    return MemoryKV.empty(one, num_slots)
