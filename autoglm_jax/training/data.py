"""Grain input pipeline: JSONL or synthetic examples -> token ids with a loss mask -> packed or
padded [B, T] batches.

    ds, info = make_dataset(recipe.data, tokenizer)
    it = iter(ds)                     # a grain DatasetIterator: get_state() / set_state()
    batch = next(it)                  # dict of i32[B, T]: inputs, targets, loss_mask,
                                      # segment_ids (0 = padding), positions

Sources:
- chat JSONL: one {"messages": [...]} per line, OpenAI-style roles and content (a string or
  a list of parts). The conversation is rendered with the tokenizer's chat template; the loss
  covers the assistant turns only (their text and the token that ends them: the next role
  token, or <|endoftext|> appended after the last turn).
- text JSONL: one {"text": "..."} per line; the loss covers every token (+ <|endoftext|>).
- synthetic: `synthetic.sample(seed, i, tasks)`, a pure function of the index; text tasks
  and the image/audio tasks.

Image and audio parts (chat JSONL: {"type": "image", "image"|"path": "img/x.png"},
{"type": "image_url", "image_url": {"url": "x.png" or a data: URI}}, {"type": "audio",
"audio"|"path": "a.wav"}, {"type": "input_audio", "input_audio": {"data": base64 WAV}}; file
paths are relative to the JSONL's folder) go through a `media_processor`; for glm4v/autoglm
models the loop passes `media.MultimodalProcessor`, the inference preprocessing. In a dataset
that holds images or audio every example goes through it, batches are padded (`mode = "pad"`)
and carry the media arrays (see media.py for the layout and its constraints).

JSONL files are scanned once at start: a malformed line raises `DataError` naming the file and
line (or is skipped and counted with `skip_bad_records`); an image/audio part whose file is
missing names the path. Records with image/audio parts and no `media_processor` (a text-only
model) raise DataError naming file and line.

Targets are shifted inside each example before packing, so no target crosses a segment.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import grain
import grain.experimental as gex
import numpy as np

from autoglm_jax.processing.content import ContentError, parse_messages
from autoglm_jax.training import media as M
from autoglm_jax.training import synthetic
from autoglm_jax.training.grouping import LengthGroupedBatches, batch_length
from autoglm_jax.training.recipe import DataRecipe
from autoglm_jax.training.records import (
    FEATURES,
    DataError,
    JsonlSource,
    MediaProcessor,
    SourceInfo,
    content_rules,
)
from autoglm_jax.training.tokens import shift, shift_media, tokenize_chat, tokenize_text

__all__ = [
    "DataError",
    "JsonlSource",
    "MediaProcessor",
    "SourceInfo",
    "make_dataset",
    "tokenize_chat",
    "tokenize_text",
]


# --- pipeline ---------------------------------------------------------------------------------


def _featurizer(
    recipe: DataRecipe, tokenizer: Any, media_processor: MediaProcessor | None, media: bool
) -> Callable[[Any], dict[str, np.ndarray]]:
    """index or JSONL item -> one example's features. `media`: the dataset holds images or
    audio, so every example goes through the media processor."""
    seq_len = recipe.seq_len
    image_token = getattr(getattr(media_processor, "config", None), "image_token_id", None)

    def features(messages: Sequence[Mapping[str, Any]], where: str) -> dict[str, np.ndarray]:
        if media:
            feats = media_processor(messages, where=where)  # type: ignore[misc]
            return shift_media(feats, seq_len, where, image_token)
        return shift(*tokenize_chat(tokenizer, messages, where), seq_len)

    def from_record(item: dict[str, Any]) -> dict[str, np.ndarray]:
        record, where = item["record"], item["where"]
        if recipe.source == "text":
            return shift(*tokenize_text(tokenizer, record["text"]), seq_len)
        base = Path(item["base_dir"])
        return features(_resolve_media(record["messages"], base, where), where)

    def from_synthetic(index: int) -> dict[str, np.ndarray]:
        sample = synthetic.sample(
            recipe.seed, int(index), recipe.synthetic_tasks, recipe.synthetic_max_len
        )
        return features(list(sample.messages), f"synthetic[{index}]")

    return from_synthetic if recipe.source == "synthetic" else from_record


def _resolve_media(
    messages: Sequence[Mapping[str, Any]], base: Path, where: str
) -> list[dict[str, Any]]:
    """The messages with their media parts as the engine's parser reads them:
    {"type": "image", "image": absolute path or data: URL bytes}, {"type": "audio", "audio":
    absolute path or WAV bytes} (`processing.content`, training's rules)."""
    try:
        return parse_messages(list(messages), content_rules(base), load=False).messages
    except ContentError as e:  # the scan checked the record; a file may have changed since
        raise DataError(f"{where}: {e}") from None


def _pad(example: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
    """One example padded to seq_len: token features [T] (positions [T] or [3, T], 0 on
    padding) and segment_ids; media arrays pass through."""
    n = len(example["inputs"])
    out = {k: (np.pad(v, (0, seq_len - n)) if k in FEATURES else v) for k, v in example.items()}
    out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
    pos = example.get("positions")
    if pos is None:
        out["positions"] = np.where(out["segment_ids"] > 0, np.arange(seq_len), 0).astype(np.int32)
    else:
        out["positions"] = np.pad(pos, [(0, 0)] * (pos.ndim - 1) + [(0, seq_len - n)]).astype(
            np.int32
        )
    return out


def _rename_packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {
        "inputs": batch["inputs"],
        "targets": batch["targets"],
        "loss_mask": batch["loss_mask"],
        "segment_ids": batch["inputs_segment_ids"],
        "positions": batch["inputs_positions"],
    }


def make_dataset(
    recipe: DataRecipe,
    tokenizer: Any,
    *,
    media_processor: MediaProcessor | None = None,
    process_index: int = 0,
    process_count: int = 1,
) -> tuple[grain.IterDataset, SourceInfo]:
    """An endless IterDataset of batches (dict of i32[B, T], plus the media arrays of a
    dataset with images or audio; B = batch_size / process_count) and what the source scan
    found. Deterministic given the recipe; its iterator's state (`get_state`/`set_state`)
    resumes it exactly."""
    if recipe.batch_size % process_count:
        raise ValueError(f"batch_size {recipe.batch_size} not divisible by {process_count} hosts")
    if recipe.source == "synthetic":
        ds = grain.MapDataset.range(recipe.synthetic_size)
        info = SourceInfo(records=recipe.synthetic_size)
        images = "image" in recipe.synthetic_tasks
        audio = "audio" in recipe.synthetic_tasks
        _check_synthetic_media(recipe, media_processor)
    else:
        src = JsonlSource(
            recipe.paths,
            recipe.source,
            skip_bad_records=recipe.skip_bad_records,
            allow_media=media_processor is not None,
        )
        ds, info = grain.MapDataset.source(src), src.info
        images, audio = info.image_records > 0, info.audio_records > 0
    media = images or audio
    info.images, info.audio = images, audio
    if media and recipe.mode != "pad":
        raise DataError(
            f"the data holds {'images' if images else 'audio'}: image/audio "
            'examples are batched one per row (set data.mode = "pad"; packing '
            "them is not supported)"
        )
    if media and process_count > 1:
        raise DataError(
            "image/audio training runs on one host for now (the media arrays of a "
            "batch are not split across processes)"
        )
    featurize = _featurizer(recipe, tokenizer, media_processor, media)
    collate = (
        _media_collate(recipe, media_processor, images, audio, recipe.batch_size // process_count)
        if media
        else None
    )
    if recipe.length_groups:
        if recipe.source == "synthetic" or recipe.mode != "pad" or process_count > 1:
            raise DataError(
                'data.length_groups: groups the records of a JSONL source in mode = "pad" '
                "on one host (hosts would cut their batches to different lengths)"
            )
        it = _length_grouped(recipe, src, featurize, collate)
    else:
        it = _batched(recipe, ds, featurize, collate, process_index, process_count)
    if recipe.prefetch > 0:
        it = gex.ThreadPrefetchIterDataset(it, prefetch_buffer_size=recipe.prefetch)
    return it, info


def _batched(
    recipe: DataRecipe,
    ds: grain.MapDataset,
    featurize: Callable[[Any], dict[str, np.ndarray]],
    collate: Callable[[Sequence[dict[str, np.ndarray]]], dict] | None,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    """Batches in the order of the (shuffled) records: packed, or padded to seq_len."""
    if process_count > 1:
        ds = ds[process_index::process_count]
    if recipe.shuffle:
        ds = ds.shuffle(seed=recipe.seed)
    ds = ds.repeat(None).map(featurize)
    it = ds.to_iter_dataset(_read_options(recipe))
    t = recipe.seq_len
    if recipe.mode == "pack":
        it = gex.FirstFitPackIterDataset(
            it,
            length_struct={k: t for k in FEATURES},
            num_packing_bins=recipe.packing_bins,
            seed=recipe.seed,
            shuffle_bins=False,
        )
        it = it.map(_rename_packed)
    else:
        it = it.map(lambda ex: _pad(ex, t))
    # collate is None in pack mode: media data is refused there
    return it.batch(recipe.batch_size // process_count, drop_remainder=True, batch_fn=collate)


def _read_options(recipe: DataRecipe) -> grain.ReadOptions:
    return grain.ReadOptions(
        num_threads=recipe.read_threads, prefetch_buffer_size=64 if recipe.read_threads else 0
    )


def _length_grouped(
    recipe: DataRecipe,
    source: JsonlSource,
    featurize: Callable[[Any], dict[str, np.ndarray]],
    collate: Callable[[Sequence[dict[str, np.ndarray]]], dict] | None,
) -> grain.IterDataset:
    """Batches of records of similar size (grouping.py), each padded to its longest example
    rounded up to data.pad_multiple."""

    def make_batch(indices: np.ndarray) -> dict[str, np.ndarray]:
        examples = [featurize(source[int(i)]) for i in indices]
        t = batch_length(
            [len(e["inputs"]) for e in examples],
            seq_len=recipe.seq_len,
            multiple=recipe.pad_multiple,
        )
        padded = [_pad(e, t) for e in examples]
        if collate is not None:
            return collate(padded)
        return {k: np.stack([p[k] for p in padded]) for k in padded[0]}

    batches = LengthGroupedBatches(
        source.sizes, batch_size=recipe.batch_size, window=recipe.length_groups, seed=recipe.seed
    )
    return batches.map(make_batch).to_iter_dataset(_read_options(recipe))


def _check_synthetic_media(recipe: DataRecipe, processor: MediaProcessor | None) -> None:
    from autoglm_jax.config import ConfigError

    for task, what in (("image", "vision"), ("audio", "audio")):
        if task not in recipe.synthetic_tasks:
            continue
        config = getattr(processor, "config", None)
        if processor is None or (config is not None and getattr(config, what, None) is None):
            raise ConfigError(
                f"field `data.synthetic_tasks`: the {task} task needs a model with "
                f"{'a vision tower' if task == 'image' else 'an audio encoder'} "
                "(model_type glm4v or autoglm, e.g. preset tiny-mm)"
            )


def _media_collate(
    recipe: DataRecipe, processor: Any, images: bool, audio: bool, batch_size: int
) -> Callable[[Sequence[dict[str, np.ndarray]]], dict]:
    config = getattr(processor, "config", None)
    vision = getattr(config, "vision", None)
    audio_cfg = getattr(config, "audio", None)
    merge = vision.spatial_merge_size if vision is not None else 2
    if images and recipe.source == "synthetic":
        pad_grid = tuple(int(v) for v in M.synthetic_image_grid()[0])
    else:
        pad_grid = (1, merge, merge)
    return M.make_collate(
        batch_size,
        images=images,
        audio=audio,
        max_images=recipe.max_images,
        max_audio_windows=recipe.max_audio_windows,
        pad_grid=pad_grid,
        patch_dim=vision.patch_dim if vision is not None else 1176,
        num_mel_bins=audio_cfg.num_mel_bins if audio_cfg is not None else 80,
    )
