"""Multimodal requests in the engine: prompt preparation (images, audio, M-RoPE positions) and
the per-request encoder outputs.

- Content parts are parsed and decoded by `processing.content` under the engine's policy
  (`ENGINE_RULES`).
- Images (glm4v and autoglm models): preprocessed on the host; the vision tower runs once per
  request at its first admission (one compilation per distinct set of image grids, made
  ahead by `EncoderCache.compile_image` for a screen size); its
  embeddings are spliced at the `<|image|>` tokens of the prompt as the chunks reach them
  (the runner hands each step's rows and a row index to the model's `embed_step`).
- M-RoPE: prompt positions come from `get_rope_index`; a generated token at index i has
  position i + delta on all three rows.
- Audio (autoglm models with a Whisper encoder): encoded once per request
  (`nn.model.request_memory`); every CGA block's memory K/V go into the model's per-slot pool
  (a `MemoryKV` with a row per slot) that the step reads through `memory_rows`, and are
  overwritten when the slot is reused.
- Prefix caching keys pages by the images' and audio's content as well as the tokens.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from autoglm_jax.config import ModelConfig
from autoglm_jax.processing.content import (
    ContentRules,
    MediaItem,
    load_media,
    media_item,
    parse_messages,
)

Array = jax.Array


@dataclasses.dataclass
class MultimodalInputs:
    """What a request carries besides its token ids."""

    positions: np.ndarray | None = None  # i32[3, L] M-RoPE positions of the prompt
    rope_delta: int = 0  # generated token i has position i + rope_delta (all rows)
    pixel_values: np.ndarray | None = None  # f32[P, 1176]
    image_grid_thw: np.ndarray | None = None  # i32[n, 3]
    image_ordinal: np.ndarray | None = None  # i32[L] index into the image embeddings, or -1
    audio_features: np.ndarray | None = None  # f32[W, mels, 3000]
    audio_frames: np.ndarray | None = None  # i32[W] real mel frames of each window
    content_hash: bytes = b""
    image_embeds: Array | None = None  # [n_image_tokens, D], set at first admission

    def release(self) -> None:
        self.image_embeds = None


ENGINE_RULES = ContentRules(strict=False, refuse_unknown=False, objects=True)
"""The engine's content policy: a library caller's own process, so any local file and any
loaded object (array, PIL image, WAV bytes, Waveform) is accepted; parts the parser does not
know, and malformed ones, are left to the chat template."""


def prompt_media(prompt: dict[str, Any], rules: ContentRules = ENGINE_RULES) -> list[MediaItem]:
    """The media of a chat prompt, parsed but not read, in order of appearance: message parts,
    then the prompt's own `images` / `audios` lists."""
    items = list(parse_messages(prompt.get("messages", []), rules, load=False).media)
    for kind in ("image", "audio"):
        key = f"{kind}s"
        items += [
            media_item(kind, s, f"{key}[{i}]", rules) for i, s in enumerate(prompt.get(key, []))
        ]
    return items


def load_prompt_media(
    items: Sequence[MediaItem], rules: ContentRules = ENGINE_RULES
) -> tuple[list[Any], list[Any]]:
    """Read the items: images u8[H, W, 3] and audio Waveforms, in order."""
    loaded = [load_media(m, rules) for m in items]
    return [m.loaded for m in loaded if m.kind == "image"], [
        m.loaded for m in loaded if m.kind == "audio"
    ]


def collect_media(prompt: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Images and audio clips of a chat prompt, decoded, in order of appearance (message parts,
    then the prompt's own `images` / `audios` lists)."""
    return load_prompt_media(prompt_media(prompt))


def check_media(config: ModelConfig, images: Sequence[Any], audios: Sequence[Any]) -> None:
    """Refuse media the model has no encoder for, naming the modality."""
    if images and getattr(config, "vision", None) is None:
        raise ValueError(
            f"this model ({config.model_type}) has no vision tower: it does not accept image input"
        )
    if audios and getattr(config, "audio", None) is None:
        raise ValueError(
            f"this model ({config.model_type}) has no audio encoder: it does not accept audio input"
        )


def prepare(
    config: ModelConfig, ids: list[int], images: Sequence[Any], audios: Sequence[Any]
) -> tuple[list[int], MultimodalInputs | None]:
    """Expand image placeholders, compute M-RoPE positions, preprocess media."""
    from autoglm_jax.processing.image import process_images
    from autoglm_jax.processing.prompt import expand_image_placeholders

    mrope = config.text.mrope_section is not None
    check_media(config, images, audios)
    if not (images or audios or mrope):
        return ids, None
    mm = MultimodalInputs()
    digest = hashlib.blake2b(digest_size=16)
    grid = None
    if images:
        merge = config.vision.spatial_merge_size
        processed = process_images(list(images))
        grid = processed.image_grid_thw
        ids = [
            int(i)
            for i in expand_image_placeholders(
                ids,
                grid,
                config.image_token_id,
                merge,
                image_start_token_id=config.image_start_token_id,
                image_end_token_id=config.image_end_token_id,
            )
        ]
        mm.pixel_values, mm.image_grid_thw = processed.pixel_values, grid
        is_image = np.asarray(ids) == config.image_token_id
        mm.image_ordinal = np.where(is_image, np.cumsum(is_image) - 1, -1).astype(np.int32)
        digest.update(processed.pixel_values.tobytes())
        digest.update(grid.tobytes())
    if audios:
        from autoglm_jax.processing.audio import load_audio

        a = config.audio
        loaded = [
            load_audio(
                src, max_seconds=a.max_audio_seconds, n_mels=a.num_mel_bins, return_frames=True
            )
            for src in audios
        ]
        mm.audio_features = np.concatenate([f for f, _ in loaded], axis=0)
        mm.audio_frames = np.concatenate([n for _, n in loaded]).astype(np.int32)
        if mm.audio_features.shape[0] > a.max_windows:
            raise ValueError(
                f"the audio spans {mm.audio_features.shape[0]} 30 s windows; the "
                f"model takes at most {a.max_windows}"
            )
        digest.update(mm.audio_features.tobytes())
        digest.update(mm.audio_frames.tobytes())
    if mrope:
        mm.positions, mm.rope_delta = mrope_positions(config, ids, grid)
    mm.content_hash = digest.digest() if (images or audios) else b""
    return ids, mm


def mrope_positions(config: ModelConfig, ids: Sequence[int], grid: Any) -> tuple[np.ndarray, int]:
    """M-RoPE positions i32[3, L] of one prompt and the delta of the tokens generated after it
    (`get_rope_index` with the model's special token ids)."""
    from autoglm_jax.processing.prompt import get_rope_index

    def token(value: int | None) -> int:
        return value if value is not None else -1

    positions, delta = get_rope_index(
        np.asarray([ids]),
        grid,
        image_token_id=token(config.image_token_id),
        video_start_token_id=token(config.video_start_token_id),
        video_end_token_id=token(config.video_end_token_id),
        spatial_merge_size=config.vision.spatial_merge_size if config.vision else 2,
    )
    return np.asarray(positions[:, 0, :], np.int32), int(np.asarray(delta).reshape(-1)[0])


def token_positions(
    mm: MultimodalInputs | None, start: int, n: int, prompt_len: int, mrope: bool
) -> np.ndarray:
    """Positions of tokens start..start+n: i32[n], or i32[3, n] under M-RoPE."""
    idx = np.arange(start, start + n, dtype=np.int32)
    if not mrope:
        return idx
    out = np.broadcast_to(idx, (3, n)).copy()
    if mm is not None and mm.positions is not None:
        in_prompt = idx < prompt_len
        out[:, in_prompt] = mm.positions[:, idx[in_prompt]]
        out[:, ~in_prompt] += mm.rope_delta
    return out


class EncoderCache:
    """Runs the vision tower and the audio memory for requests, with jitted functions cached
    by input shape (their count is part of the engine's compilation count)."""

    def __init__(self, module: Any, params: Any, config: ModelConfig):
        self.module, self.params, self.config = module, params, config
        self._vision: dict[tuple, Any] = {}
        self._audio: dict[int, Any] = {}

    @property
    def num_compilations(self) -> int:
        return len(self._vision) + len(self._audio)

    def image_embeds(self, mm: MultimodalInputs) -> Array:
        from autoglm_jax.nn.vision import grid_tuple

        grid = grid_tuple(mm.image_grid_thw)
        fn = self._vision.get(grid)
        if fn is None:
            module = self.module

            @jax.jit
            def fn(params: Any, pixel_values: Array) -> Array:
                return module.apply(
                    {"params": params}, pixel_values, grid, method=lambda m, pv, g: m.visual(pv, g)
                )

            self._vision[grid] = fn
        return fn(self.params, jnp.asarray(mm.pixel_values))

    def compile_image(self, height: int, width: int) -> int:
        """Compile the vision tower for a request holding one image of height x width (a phone
        agent's screenshot size), so that such a request compiles nothing. Returns the
        compilations done (0 when that grid was compiled already)."""
        from autoglm_jax.processing.image import process_images

        processed = process_images([np.zeros((height, width, 3), np.uint8)])
        before = len(self._vision)
        mm = MultimodalInputs(
            pixel_values=processed.pixel_values, image_grid_thw=processed.image_grid_thw
        )
        jax.block_until_ready(self.image_embeds(mm))
        return len(self._vision) - before

    def compile_audio(self) -> Any:
        """Compile the audio memory for every window count a request may bring (1 to
        `audio.max_windows`: a voice command is one), so that audio compiles nothing when
        met. Returns the last memory, for the caller to compile its pool write with."""
        from autoglm_jax.processing.audio import N_FRAMES

        memory = None
        for windows in range(1, self.config.audio.max_windows + 1):
            features = np.zeros((windows, self.config.audio.num_mel_bins, N_FRAMES), np.float32)
            mm = MultimodalInputs(
                audio_features=features, audio_frames=np.full((windows,), N_FRAMES, np.int32)
            )
            memory = jax.block_until_ready(self.audio_memory_kv(mm))
        return memory

    def audio_memory_kv(self, mm: MultimodalInputs) -> Any:
        """This request's CGA memory (`nn.model.request_memory`): a MemoryKV with R = 1."""
        from autoglm_jax.nn.model import request_memory

        windows = mm.audio_features.shape[0]
        fn = self._audio.get(windows)
        if fn is None:
            fn = self._audio[windows] = jax.jit(functools.partial(request_memory, self.config))
        frames = (
            mm.audio_frames
            if mm.audio_frames is not None
            else np.full((windows,), mm.audio_features.shape[-1], np.int32)
        )
        return fn(self.params, jnp.asarray(mm.audio_features), jnp.asarray(frames))
