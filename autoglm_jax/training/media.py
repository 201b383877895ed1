"""Image and audio examples for training, preprocessed by the inference code.

    proc = MultimodalProcessor(model.config, tokenizer, max_images=1, max_audio_windows=1)
    feats = proc(messages, where="data.jsonl:3")
    collate = make_collate(batch_size, max_images=1, max_audio_windows=1, ...)

`MultimodalProcessor` renders the conversation with the chat template (`tokenize_chat`: image
parts become `<|begin_of_image|><|image|><|end_of_image|>`, audio parts
`<|begin_of_audio|><|audio|><|end_of_audio|>`), then runs `engine.multimodal.prepare`, the
function the engine runs on every request: `process_images` (resize, normalize, patches),
placeholder expansion (one `<|image|>` per vision token), `load_audio` (WAV -> 30 s log-mel
windows) and the M-RoPE positions (`get_rope_index`). So placeholders, grids, positions and
audio features are those serving computes for the same conversation; the loss mask is
expanded alongside the ids.

Batches (pad mode; `make_collate`): token features are stacked to [B, T] (positions
[B, 3, T] under M-RoPE). Images: `pixel_values` f32[P, 1176] of every image of the batch in
row-major order, then zero padding images up to batch_size * max_images images, and
`image_grid_thw` i32[batch_size * max_images, 3] (host numpy, a static argument of the step).
The padding images take the grid of the batch's first image (or `pad_grid`), so when every
image of a dataset has one size, every batch has the same grid tuple and the step compiles
once; batches with different image sizes compile once per distinct tuple (bucket your data
by image size). The splice (`splice_embeddings`) consumes image embeddings in row-major order
and ignores the padding ones. Audio: `input_features` f32[batch_size * max_audio_windows,
mels, 3000], row r's windows at r * max_audio_windows + j, `audio_rows` i32[...] (r, or
-1 for a padding window, which the CGA blocks mask out) and `audio_frames` i32[...] (real mel
frames of each window, 0 for padding ones: the CGA blocks attend only to the clip itself).
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

import numpy as np

from autoglm_jax.config import ModelConfig
from autoglm_jax.training.records import DataError
from autoglm_jax.training.tokens import tokenize_chat

TOKEN_KEYS = ("inputs", "targets", "loss_mask", "segment_ids", "positions")


class MultimodalProcessor:
    """Chat conversation with image/audio parts -> training features, through the inference
    preprocessing (`engine.multimodal.prepare`). A `MediaProcessor` (see data.py).

    Returns input_ids i32[L] (image placeholders expanded), loss_mask i32[L] (0 on image and
    audio tokens), positions i32[3, L] (M-RoPE models) or i32[L], and when present
    pixel_values f32[P, 1176] + image_grid_thw i32[n, 3], audio_features f32[W, mels, 3000].
    Errors (unreadable or missing media, too many images/windows, a model without the
    encoder) are DataErrors that start with `where` ("file:line").
    """

    def __init__(
        self,
        config: ModelConfig,
        tokenizer: Any,
        *,
        max_images: int = 1,
        max_audio_windows: int = 1,
    ):
        self.config, self.tokenizer = config, tokenizer
        self.max_images, self.max_audio_windows = max_images, max_audio_windows
        self.mrope = config.text.mrope_section is not None
        vision = getattr(config, "vision", None)
        self.merge = vision.spatial_merge_size if vision is not None else 2

    @property
    def has_vision(self) -> bool:
        return getattr(self.config, "vision", None) is not None

    @property
    def has_audio(self) -> bool:
        return getattr(self.config, "audio", None) is not None

    def __call__(
        self, messages: Sequence[Mapping[str, Any]], *, where: str
    ) -> dict[str, np.ndarray]:
        from autoglm_jax.engine.multimodal import collect_media, prepare

        try:
            images, audios = collect_media({"messages": list(messages)})
        except (ValueError, OSError) as e:  # ContentError: a file gone or changed since the scan
            raise DataError(f"{where}: {e}") from None
        if len(images) > self.max_images:
            raise DataError(
                f"{where}: {len(images)} images in one example; data.max_images is "
                f"{self.max_images}"
            )
        ids, mask = tokenize_chat(self.tokenizer, messages, where)
        try:
            new_ids, mm = prepare(self.config, ids.tolist(), images, audios)
        except (ValueError, OSError) as e:  # ImageError and AudioError are ValueErrors
            raise DataError(f"{where}: {e}") from None
        new_ids = np.asarray(new_ids, np.int32)
        out: dict[str, np.ndarray] = {"input_ids": new_ids}
        if images:
            grid = np.asarray(mm.image_grid_thw, np.int32)
            repeats = np.ones(len(ids), np.int64)
            repeats[ids == self.config.image_token_id] = grid.prod(-1) // self.merge**2
            if not np.array_equal(np.repeat(ids, repeats), new_ids):  # guards the mask below
                raise DataError(
                    f"{where}: image placeholder expansion did not line up with "
                    "the chat template's image tokens"
                )
            mask = np.repeat(mask, repeats)
            out["pixel_values"] = np.asarray(mm.pixel_values, np.float32)
            out["image_grid_thw"] = grid
        media_tokens = [
            t
            for t in (self.config.image_token_id, getattr(self.config, "audio_token_id", None))
            if t is not None
        ]
        out["loss_mask"] = np.where(np.isin(new_ids, media_tokens), 0, mask).astype(np.int32)
        if audios:
            feats = np.asarray(mm.audio_features, np.float32)
            if feats.shape[0] > self.max_audio_windows:
                raise DataError(
                    f"{where}: the audio spans {feats.shape[0]} 30 s windows; "
                    f"data.max_audio_windows is {self.max_audio_windows}"
                )
            out["audio_features"] = feats
            out["audio_frames"] = np.asarray(mm.audio_frames, np.int32)
        if self.mrope:
            out["positions"] = (
                np.asarray(mm.positions, np.int32)
                if mm is not None and mm.positions is not None
                else np.broadcast_to(
                    np.arange(len(new_ids), dtype=np.int32), (3, len(new_ids))
                ).copy()
            )
        return out


def processor_for(config: ModelConfig, tokenizer: Any, data: Any) -> "MultimodalProcessor | None":
    """The MultimodalProcessor a model of `config` trains with on DataRecipe `data` (None for
    a model without a vision tower or audio encoder)."""
    if getattr(config, "vision", None) is None and getattr(config, "audio", None) is None:
        return None
    return MultimodalProcessor(
        config, tokenizer, max_images=data.max_images, max_audio_windows=data.max_audio_windows
    )


def synthetic_image_grid() -> np.ndarray:
    """i32[1, 3]: the grid every synthetic image gets from `process_images`."""
    from autoglm_jax.processing.image import process_images
    from autoglm_jax.training import synthetic

    blank = np.zeros((synthetic.IMAGE_SIZE, synthetic.IMAGE_SIZE, 3), np.uint8)
    return np.asarray(process_images([blank]).image_grid_thw, np.int32)


def make_collate(
    batch_size: int,
    *,
    images: bool,
    audio: bool,
    max_images: int = 1,
    max_audio_windows: int = 1,
    pad_grid: Sequence[int] = (1, 2, 2),
    patch_dim: int = 1176,
    num_mel_bins: int = 80,
    num_frames: int = 3000,
) -> Callable[[Sequence[dict[str, np.ndarray]]], dict[str, np.ndarray]]:
    """The batch function of a dataset with images and/or audio (see the module docstring).
    `images` / `audio`: whether the dataset can hold them; their keys are then in every
    batch (shapes fixed by batch_size and the maxima), so the step compiles once."""

    def collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
        if len(examples) != batch_size:
            raise ValueError(f"collate got {len(examples)} examples, expected {batch_size}")
        out = {k: np.stack([e[k] for e in examples]) for k in TOKEN_KEYS}
        if images:
            pvs = [e["pixel_values"] for e in examples if "image_grid_thw" in e]
            grids = [e["image_grid_thw"] for e in examples if "image_grid_thw" in e]
            n = sum(len(g) for g in grids)
            if n > batch_size * max_images:
                raise ValueError(
                    f"{n} images in a batch of {batch_size} rows; the batch holds "
                    f"at most {batch_size * max_images} (data.max_images)"
                )
            pad = np.asarray(grids[0][0] if grids else pad_grid, np.int32)
            n_pad = batch_size * max_images - n
            pvs.append(np.zeros((n_pad * int(pad.prod()), patch_dim), np.float32))
            grids.append(np.tile(pad[None], (n_pad, 1)))
            out["pixel_values"] = np.concatenate(pvs).astype(np.float32)
            out["image_grid_thw"] = np.concatenate(grids).astype(np.int32)
        if audio:
            w = max_audio_windows
            feats = np.zeros((batch_size * w, num_mel_bins, num_frames), np.float32)
            rows = np.full((batch_size * w,), -1, np.int32)
            frames = np.zeros((batch_size * w,), np.int32)  # padding windows: no real frames
            for r, e in enumerate(examples):
                a = e.get("audio_features")
                if a is not None:
                    if len(a) > w:
                        raise ValueError(
                            f"an example has {len(a)} audio windows; the batch "
                            f"holds {w} per row (data.max_audio_windows)"
                        )
                    feats[r * w : r * w + len(a)] = a
                    rows[r * w : r * w + len(a)] = r
                    frames[r * w : r * w + len(a)] = e.get("audio_frames", num_frames)
            out["input_features"], out["audio_rows"] = feats, rows
            out["audio_frames"] = frames
        return out

    return collate
