"""Prompt assembly for GLM-4.1V: image placeholder expansion, 3D M-RoPE position ids and
splicing vision embeddings into the token embeddings.

`get_rope_index` and `make_mm_token_type_ids` are numpy ports of transformers' glm4v
`Glm4vModel.get_rope_index` and `Glm4vProcessor.create_mm_token_type_ids`; `splice_embeddings`
is the jit-friendly equivalent of its `inputs_embeds.masked_scatter(image_mask, image_embeds)`.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

# GLM-4.1V token ids (read them from config.json when there is one; later GLM-V configs differ).
IMAGE_TOKEN_ID = 151343
IMAGE_START_TOKEN_ID = 151339
IMAGE_END_TOKEN_ID = 151340
VIDEO_START_TOKEN_ID = 151341
VIDEO_END_TOKEN_ID = 151342

TEXT, IMAGE, VIDEO = 0, 1, 2


def _grid_array(grid: Any, name: str) -> np.ndarray | None:
    if grid is None:
        return None
    arr = np.asarray(grid, dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"{name} must have shape [n, 3], got {arr.shape}")
    return arr


def make_mm_token_type_ids(
    input_ids: Any,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_start_token_id: int = VIDEO_START_TOKEN_ID,
    video_end_token_id: int = VIDEO_END_TOKEN_ID,
) -> np.ndarray:
    """i32[B, L] (or [L]): 0 text, 1 image token, 2 image token inside a video segment
    (GLM-4.1V writes video frames with the image token between video begin/end markers)."""
    ids = np.asarray(input_ids)
    starts = np.cumsum(ids == video_start_token_id, axis=-1)
    ends = np.cumsum(ids == video_end_token_id, axis=-1)
    is_video = starts > ends
    is_image_token = ids == image_token_id
    types = np.zeros(ids.shape, np.int32)
    types[is_image_token & is_video] = VIDEO
    types[is_image_token & ~is_video] = IMAGE
    return types


def vision_position_ids(start: int, grid_thw: Sequence[int], spatial_merge_size: int) -> np.ndarray:
    """i64[3, t*h*w/m^2]: (t, h, w) positions of one image's tokens, offset by `start`."""
    t, h, w = (int(v) for v in grid_thw)
    gt, gh, gw = np.meshgrid(
        np.arange(t),
        np.arange(h // spatial_merge_size) + start,
        np.arange(w // spatial_merge_size) + start,
        indexing="ij",
    )
    pos = np.stack([gt, gh, gw]).reshape(3, -1)
    pos[0] += start
    return pos


def get_rope_index(
    input_ids: Any,
    image_grid_thw: Any = None,
    attention_mask: Any = None,
    *,
    video_grid_thw: Any = None,
    mm_token_type_ids: Any = None,
    image_token_id: int = IMAGE_TOKEN_ID,
    video_start_token_id: int = VIDEO_START_TOKEN_ID,
    video_end_token_id: int = VIDEO_END_TOKEN_ID,
    spatial_merge_size: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """3D M-RoPE positions for GLM-4.1V prompts (numpy port of transformers' get_rope_index).

    input_ids i[B, L] (already expanded: one `<|image|>` per vision token); image_grid_thw
    [n_images, 3] for all images of the batch in order; attention_mask [B, L] (0 = padding;
    padded slots get position 0); video_grid_thw [n_videos, 3]. Token types come from
    `mm_token_type_ids` if given, else from the ids (as Glm4vProcessor makes them).

    Returns position_ids i32[3, B, L] and mrope_position_deltas i32[B, 1]: a token generated at
    sequence index i (after the prompt) has position i + delta on all three rows.
    """
    ids = np.asarray(input_ids)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape [B, L], got {ids.shape}")
    types = (
        make_mm_token_type_ids(ids, image_token_id, video_start_token_id, video_end_token_id)
        if mm_token_type_ids is None
        else np.asarray(mm_token_type_ids)
    )
    if types.shape != ids.shape:
        raise ValueError(f"mm_token_type_ids shape {types.shape} != input_ids shape {ids.shape}")
    mask = None if attention_mask is None else np.asarray(attention_mask).astype(bool)
    if mask is not None and mask.shape != ids.shape:
        raise ValueError(f"attention_mask shape {mask.shape} != input_ids shape {ids.shape}")
    images = _grid_array(image_grid_thw, "image_grid_thw")
    videos = _grid_array(video_grid_thw, "video_grid_thw")
    if videos is not None:  # GLM separates video frames with timestamps: one grid per frame
        videos = np.repeat(videos, videos[:, 0], axis=0)
        videos[:, 0] = 1
    grid_iters = {
        IMAGE: iter(images) if images is not None else iter(()),
        VIDEO: iter(videos) if videos is not None else iter(()),
    }
    merge = spatial_merge_size

    batch, length = ids.shape
    position_ids = np.zeros((3, batch, length), np.int64)
    deltas = []
    for b in range(batch):
        row_types = types[b] if mask is None else types[b][mask[b]]
        current, pieces = 0, []
        for modality, group in itertools.groupby(enumerate(row_types.tolist()), lambda x: x[1]):
            group = list(group)
            n = group[-1][0] + 1 - group[0][0]
            if modality == TEXT:
                pieces.append(np.broadcast_to(np.arange(n) + current, (3, n)))
                current += n
                continue
            kind = "image" if modality == IMAGE else "video frame"
            grid = next(grid_iters[modality], None)
            if grid is None:
                raise ValueError(f"row {b}: more {kind} token runs than {kind} grids given")
            pos = vision_position_ids(current, grid, merge)
            if pos.shape[1] != n:
                raise ValueError(
                    f"row {b}: a run of {n} {kind} tokens does not match its grid "
                    f"{[int(v) for v in grid]}, which needs t*h*w/{merge**2} = {pos.shape[1]}"
                )
            pieces.append(pos)
            current += max(int(grid[1]), int(grid[2])) // merge
        row = np.concatenate(pieces, axis=1) if pieces else np.zeros((3, 0), np.int64)
        if mask is None:
            position_ids[:, b] = row
        else:
            position_ids[:, b, mask[b]] = row
        deltas.append((int(row.max()) + 1 if row.size else 0) - row.shape[1])
    return position_ids.astype(np.int32), np.asarray(deltas, np.int32)[:, None]


def expand_image_placeholders(
    token_ids: Sequence[int] | np.ndarray,
    image_grid_thw: Any,
    image_token_id: int = IMAGE_TOKEN_ID,
    merge_size: int = 2,
    *,
    image_start_token_id: int | None = IMAGE_START_TOKEN_ID,
    image_end_token_id: int | None = IMAGE_END_TOKEN_ID,
) -> np.ndarray:
    """i32[L']: each single `<|image|>` in token_ids [L] replaced by t*h*w/merge_size^2 copies,
    one per vision token of the matching image (images in order). With start/end ids given,
    each placeholder must sit between `<|begin_of_image|>` and `<|end_of_image|>`."""
    ids = np.asarray(token_ids, dtype=np.int64)
    if ids.ndim != 1:
        raise ValueError(f"token_ids must be one prompt [L], got shape {ids.shape}")
    grids = _grid_array(image_grid_thw, "image_grid_thw")
    grids = np.zeros((0, 3), np.int64) if grids is None else grids
    where = np.flatnonzero(ids == image_token_id)
    if len(where) != len(grids):
        raise ValueError(
            f"the prompt has {len(where)} image placeholders but {len(grids)} images were given"
        )
    for k, i in enumerate(where):
        if image_start_token_id is not None and (i == 0 or ids[i - 1] != image_start_token_id):
            raise ValueError(
                f"image placeholder {k} at index {i} is not preceded by "
                f"<|begin_of_image|> ({image_start_token_id})"
            )
        if image_end_token_id is not None and (
            i + 1 >= len(ids) or ids[i + 1] != image_end_token_id
        ):
            raise ValueError(
                f"image placeholder {k} at index {i} is not followed by "
                f"<|end_of_image|> ({image_end_token_id})"
            )
    pieces, prev = [], 0
    for i, grid in zip(where, grids):
        t, h, w = (int(v) for v in grid)
        if h % merge_size or w % merge_size:
            raise ValueError(f"image grid {[t, h, w]}: h and w must be multiples of {merge_size}")
        pieces.append(ids[prev:i])
        pieces.append(np.full((t * h * w // merge_size**2,), image_token_id, np.int64))
        prev = i + 1
    pieces.append(ids[prev:])
    return np.concatenate(pieces).astype(np.int32)


def splice_embeddings(
    text_embeds: jax.Array,
    image_embeds: jax.Array,
    input_ids: jax.Array,
    image_token_id: int = IMAGE_TOKEN_ID,
) -> jax.Array:
    """text_embeds [B, T, D] with the rows at image tokens of input_ids [B, T] replaced by
    image_embeds [P, D], consumed in row-major (batch, then position) order as HF's
    masked_scatter does. Jit-friendly: a cumulative-count gather, no boolean indexing.

    The caller guarantees P >= the number of image tokens (extra rows, e.g. bucket padding, are
    ignored); with fewer rows the surplus tokens would repeat the last row.
    """
    b, t, d = text_embeds.shape
    if image_embeds.shape[0] == 0:
        return text_embeds
    is_image = input_ids == image_token_id  # [B, T]
    index = jnp.cumsum(is_image.reshape(-1).astype(jnp.int32)) - 1  # [B*T]
    index = jnp.clip(index, 0, image_embeds.shape[0] - 1)
    gathered = jnp.take(image_embeds, index, axis=0).reshape(b, t, d)
    return jnp.where(is_image[..., None], gathered.astype(text_embeds.dtype), text_embeds)
