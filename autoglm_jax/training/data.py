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

import base64
import binascii
import dataclasses
import json
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import grain
import grain.experimental as gex
import numpy as np

from autoglm_jax.training import synthetic
from autoglm_jax.training.recipe import DataRecipe

FEATURES = ("inputs", "targets", "loss_mask")
MEDIA_PART_TYPES = ("image", "image_url", "audio", "input_audio", "video")


class DataError(ValueError):
    """A training record is malformed; the message names the file and line."""


class MediaProcessor(Protocol):
    """Turns a conversation (with image/audio parts) into features (the multimodal hook);
    `media.MultimodalProcessor` is the real one.

    Must return at least `input_ids` i32[L] and `loss_mask` i32[L]; may return `positions`
    (i32[3, L] or [L]), `pixel_values` + `image_grid_thw`, `audio_features`. `where` is
    "file:line" for error messages; media file paths are already absolute.
    """

    def __call__(self, messages: Sequence[Mapping[str, Any]], *, where: str) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class SourceInfo:
    """What the scan of the JSONL files found."""

    records: int = 0
    skipped: int = 0
    skipped_examples: list[str] = dataclasses.field(default_factory=list)  # first few reasons
    image_records: int = 0  # records with image parts
    audio_records: int = 0  # records with audio parts
    images: bool = False    # batches carry pixel_values (set by make_dataset)
    audio: bool = False     # batches carry input_features


# --- record validation -------------------------------------------------------------------


IMAGE_PART_TYPES = ("image", "image_url")
AUDIO_PART_TYPES = ("audio", "input_audio")


def _media_ref(part: Mapping[str, Any]) -> tuple[str, str | None]:
    """(kind "image"/"audio", file path or None) of a media part; None: inline data (a data:
    URI, or input_audio's base64 `data`). Raises ValueError for what training cannot read."""
    t = part["type"]
    if t not in IMAGE_PART_TYPES + AUDIO_PART_TYPES:
        raise ValueError(f"{t} parts are not supported in training (images and audio are)")
    kind = "image" if t in IMAGE_PART_TYPES else "audio"
    value = part.get(t)
    if t == "input_audio":
        if isinstance(value, str) or (isinstance(value, Mapping)
                                      and isinstance(value.get("data"), str)):
            return kind, None  # base64 WAV bytes
    if value is None:
        value = part.get("path", part.get("url"))
    if isinstance(value, Mapping):
        value = value.get("url", value.get("path"))
    if not isinstance(value, str) or not value:
        raise ValueError(f"{t} part needs a file path (or a data: URI)")
    if value.startswith("data:"):
        return kind, None
    if value.startswith("file://"):
        value = value[len("file://"):]
    if "://" in value:
        raise ValueError(f"{t} part: only local file paths and data: URIs are supported, got "
                         f"{value[:60]!r}")
    return kind, value


def _check_messages(messages: Any, base_dir: Path) -> set[str]:
    """Validates a chat record; the media kinds it holds ({"image", "audio"}). Raises
    ValueError / FileNotFoundError with a message that the caller prefixes."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    kinds: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string `role`")
        content = m.get("content")
        if content is None or isinstance(content, str):
            continue
        if not isinstance(content, list):
            raise ValueError(f"messages[{i}].content must be a string or a list of parts")
        for j, part in enumerate(content):
            if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                raise ValueError(f"messages[{i}].content[{j}] must be an object with a `type`")
            if part["type"] in MEDIA_PART_TYPES:
                try:
                    kind, path = _media_ref(part)
                except ValueError as e:
                    raise ValueError(f"messages[{i}].content[{j}]: {e}") from None
                kinds.add(kind)
                if path is not None:
                    full = (base_dir / path).resolve()
                    if not full.is_file():
                        raise FileNotFoundError(f"{part['type']} file not found: {full}")
            elif part["type"] == "text" and not isinstance(part.get("text"), str):
                raise ValueError(f"messages[{i}].content[{j}]: text part needs a string `text`")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message (nothing to train on)")
    return kinds


def _check_record(record: Any, kind: str, base_dir: Path) -> set[str]:
    if not isinstance(record, dict):
        raise ValueError(f"expected a JSON object, got {type(record).__name__}")
    if kind == "text":
        if not isinstance(record.get("text"), str):
            raise ValueError("expected a string field `text`")
        return set()
    if "messages" not in record:
        raise ValueError("expected a field `messages`")
    return _check_messages(record["messages"], base_dir)


# --- the JSONL source ----------------------------------------------------------------------


class JsonlSource:
    """Random access over the good lines of JSONL files (a grain data source).

    Items are dicts {"record": parsed JSON, "where": "file:line", "base_dir": str}.
    """

    def __init__(self, paths: Sequence[str | Path], kind: str, *, skip_bad_records: bool = False,
                 allow_media: bool = False):
        if kind not in ("chat", "text"):
            raise ValueError(f"kind must be 'chat' or 'text', got {kind!r}")
        self.kind = kind
        self.paths = [Path(p).resolve() for p in paths]
        self.info = SourceInfo()
        self._index: list[tuple[int, int, int]] = []  # (path index, line number, byte offset)
        for pi, path in enumerate(self.paths):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: JSONL file not found")
            self._scan(pi, path, skip_bad_records, allow_media)
        self.info.records = len(self._index)
        if not self._index:
            raise DataError(f"no usable records in {', '.join(map(str, self.paths))} "
                            f"({self.info.skipped} skipped)")

    def _scan(self, pi: int, path: Path, skip: bool, allow_media: bool) -> None:
        offset = 0
        with open(path, "rb") as f:
            for line_no, raw in enumerate(f, start=1):
                start, offset = offset, offset + len(raw)
                if not raw.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(raw)
                    kinds = _check_record(record, self.kind, path.parent)
                except (ValueError, FileNotFoundError) as e:  # JSONDecodeError is a ValueError
                    reason = f"{where}: {'invalid JSON: ' if isinstance(e, json.JSONDecodeError) else ''}{e}"
                    if not skip:
                        raise DataError(reason + " (set data.skip_bad_records to skip such lines)") from None
                    self.info.skipped += 1
                    if len(self.info.skipped_examples) < 5:
                        self.info.skipped_examples.append(reason)
                    continue
                if kinds and not allow_media:
                    raise DataError(
                        f"{where}: record has {'/'.join(sorted(kinds))} parts, but the model has "
                        "no image/audio encoder (train a glm4v or autoglm model, e.g. preset "
                        "tiny-mm, or pass a media_processor to make_dataset)")
                self.info.image_records += "image" in kinds
                self.info.audio_records += "audio" in kinds
                self._index.append((pi, line_no, start))

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pi, line_no, offset = self._index[i]
        path = self.paths[pi]
        with open(path, "rb") as f:
            f.seek(offset)
            record = json.loads(f.readline())
        return {"record": record, "where": f"{path}:{line_no}", "base_dir": str(path.parent)}

    def __repr__(self) -> str:
        return f"JsonlSource({[str(p) for p in self.paths]}, kind={self.kind!r})"


# --- tokenization ----------------------------------------------------------------------------


ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>", "<|observation|>")


def tokenize_chat(tokenizer: Any, messages: Sequence[Mapping[str, Any]],
                  where: str = "chat") -> tuple[np.ndarray, np.ndarray]:
    """(input_ids i32[L], loss_mask i32[L]) of a conversation rendered by the chat template.

    The mask is 1 on each assistant turn's text and on the token that ends it when that token
    is a stop token (the next <|user|> / <|observation|>, or <|endoftext|>, which is appended
    after a final assistant turn). Fast path: the turns are delimited by the GLM role tokens in
    the ids. When the role tokens do not line up with the messages (another template), the
    spans are found by rendering each prefix of the conversation instead.
    """
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    eos = tokenizer.eos_token_id
    if messages[-1]["role"] == "assistant" and eos is not None:
        text += tokenizer.id_to_token(eos)
    enc = tokenizer.backend.encode(text, add_special_tokens=False)
    ids = np.asarray(enc.ids, np.int32)
    stops = np.asarray(sorted(set(tokenizer.stop_token_ids) | ({eos} if eos is not None else set())))
    role_ids = [tokenizer.token_to_id(t) for t in ROLE_TOKENS]
    n_assistant = sum(m["role"] == "assistant" for m in messages)
    if None not in role_ids and np.count_nonzero(ids == role_ids[2]) == n_assistant:
        bounds = np.nonzero(np.isin(ids, role_ids + ([eos] if eos is not None else [])))[0]
        spans = []
        for p in np.nonzero(ids == role_ids[2])[0]:
            later = bounds[bounds > p]
            spans.append((p + 1, int(later[0]) if later.size else len(ids)))
    else:
        spans = _spans_by_prefix(tokenizer, messages, text, enc, where)
    mask = np.zeros(len(ids), np.int32)
    for s, e in spans:
        mask[s:e] = 1
        if e < len(ids) and ids[e] in stops:
            mask[e] = 1
    return ids, mask


def _spans_by_prefix(tokenizer: Any, messages: Sequence[Mapping[str, Any]], text: str, enc: Any,
                     where: str) -> list[tuple[int, int]]:
    """Token ranges [start, end) of the assistant turns' content, found by rendering every
    prefix of the conversation (works for any template that renders prefixes as prefixes)."""
    render = lambda ms: tokenizer.apply_chat_template(ms, add_generation_prompt=False)  # noqa: E731
    starts = np.asarray([s for s, _ in enc.offsets], np.int64)
    spans, prev = [], ""
    for i, m in enumerate(messages):
        cur = render(messages[: i + 1])
        if not text.startswith(cur) or not cur.startswith(prev):
            raise DataError(f"{where}: the chat template does not render prefixes of the "
                            "conversation as prefixes; cannot locate assistant turns")
        if m["role"] == "assistant":
            tag = cur.find(ROLE_TOKENS[2], len(prev))
            start = tag + len(ROLE_TOKENS[2]) if tag >= 0 else len(prev)
            spans.append((int(np.searchsorted(starts, start)), int(np.searchsorted(starts, len(cur)))))
        prev = cur
    return spans


def tokenize_text(tokenizer: Any, text: str) -> tuple[np.ndarray, np.ndarray]:
    ids = tokenizer.encode(text)
    if tokenizer.eos_token_id is not None:
        ids = ids + [tokenizer.eos_token_id]
    ids = np.asarray(ids, np.int32)
    return ids, np.ones(len(ids), np.int32)


def shift(ids: np.ndarray, mask: np.ndarray, seq_len: int,
          positions: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """Next-token features of one example, truncated to seq_len (positions [..., L] of the
    inputs, when given)."""
    ids, mask = ids[: seq_len + 1], mask[: seq_len + 1]
    out = {"inputs": ids[:-1], "targets": ids[1:], "loss_mask": mask[1:].astype(np.int32)}
    if positions is not None:
        out["positions"] = np.asarray(positions, np.int32)[..., : len(ids) - 1]
    return out


def shift_media(feats: Mapping[str, np.ndarray], seq_len: int, where: str,
                image_token_id: int | None) -> dict[str, np.ndarray]:
    """`shift` of a media processor's output, with its media arrays. Truncation must keep
    every image token (the image embeddings are spliced in order across the batch)."""
    ids = np.asarray(feats["input_ids"], np.int32)
    out = shift(ids, np.asarray(feats["loss_mask"], np.int32), seq_len, feats.get("positions"))
    if "image_grid_thw" in feats and image_token_id is not None:
        kept = int(np.count_nonzero(out["inputs"] == image_token_id))
        total = int(np.count_nonzero(ids == image_token_id))
        if kept != total:
            raise DataError(f"{where}: the example is {len(ids)} tokens and data.seq_len "
                            f"{seq_len} would cut {total - kept} of its {total} image tokens; "
                            "raise data.seq_len")
    for k in ("pixel_values", "image_grid_thw", "audio_features", "audio_frames"):
        if k in feats:
            out[k] = feats[k]
    return out


# --- pipeline ---------------------------------------------------------------------------------


def _featurizer(recipe: DataRecipe, tokenizer: Any, media_processor: MediaProcessor | None,
                media: bool) -> Callable[[Any], dict[str, np.ndarray]]:
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
        return features([_resolve_media(m, base, where) for m in record["messages"]], where)

    def from_synthetic(index: int) -> dict[str, np.ndarray]:
        sample = synthetic.sample(recipe.seed, int(index), recipe.synthetic_tasks,
                                  recipe.synthetic_max_len)
        return features(list(sample.messages), f"synthetic[{index}]")

    return from_synthetic if recipe.source == "synthetic" else from_record


def _resolve_media(message: Mapping[str, Any], base: Path, where: str) -> dict[str, Any]:
    """A message whose media parts are in the forms `engine.multimodal.collect_media` reads:
    {"type": "image", "image": absolute path or data URI}, {"type": "audio", "audio":
    absolute path or bytes}; input_audio base64 parts are kept."""
    content = message.get("content")
    if not isinstance(content, list):
        return dict(message)
    parts = []
    for part in content:
        if part.get("type") in MEDIA_PART_TYPES:
            kind, path = _media_ref(part)
            if path is not None:
                part = {"type": kind, kind: str((base / path).resolve())}
            elif part["type"] != "input_audio":
                uri = part.get(part["type"])
                uri = uri.get("url", uri.get("path")) if isinstance(uri, Mapping) else uri
                if uri is None:
                    uri = part.get("path", part.get("url"))
                if kind == "audio":  # data:audio/wav;base64,... -> the WAV bytes
                    try:
                        uri = base64.b64decode(uri.partition(",")[2], validate=True)
                    except (binascii.Error, ValueError):
                        raise DataError(f"{where}: audio data URI is not valid base64") from None
                part = {"type": kind, kind: uri}
        parts.append(part)
    return {**message, "content": parts}


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
        out["positions"] = np.pad(pos, [(0, 0)] * (pos.ndim - 1) + [(0, seq_len - n)]).astype(np.int32)
    return out


def _rename_packed(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"inputs": batch["inputs"], "targets": batch["targets"],
            "loss_mask": batch["loss_mask"], "segment_ids": batch["inputs_segment_ids"],
            "positions": batch["inputs_positions"]}


def make_dataset(recipe: DataRecipe, tokenizer: Any, *,
                 media_processor: MediaProcessor | None = None,
                 process_index: int = 0, process_count: int = 1,
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
        src = JsonlSource(recipe.paths, recipe.source, skip_bad_records=recipe.skip_bad_records,
                          allow_media=media_processor is not None)
        ds, info = grain.MapDataset.source(src), src.info
        images, audio = info.image_records > 0, info.audio_records > 0
    media = images or audio
    info.images, info.audio = images, audio
    if media and recipe.mode != "pad":
        raise DataError(f"the data holds {'images' if images else 'audio'}: image/audio "
                        "examples are batched one per row (set data.mode = \"pad\"; packing "
                        "them is not supported)")
    if media and process_count > 1:
        raise DataError("image/audio training runs on one host for now (the media arrays of a "
                        "batch are not split across processes)")
    if process_count > 1:
        ds = ds[process_index::process_count]
    if recipe.shuffle:
        ds = ds.shuffle(seed=recipe.seed)
    ds = ds.repeat(None).map(_featurizer(recipe, tokenizer, media_processor, media))
    it = ds.to_iter_dataset(grain.ReadOptions(
        num_threads=recipe.read_threads, prefetch_buffer_size=64 if recipe.read_threads else 0))
    t = recipe.seq_len
    batch_fn = None
    if recipe.mode == "pack":
        it = gex.FirstFitPackIterDataset(
            it, length_struct={k: t for k in FEATURES}, num_packing_bins=recipe.packing_bins,
            seed=recipe.seed, shuffle_bins=False)
        it = it.map(_rename_packed)
    else:
        it = it.map(lambda ex: _pad(ex, t))
        if media:
            batch_fn = _media_collate(recipe, media_processor, images, audio,
                                      recipe.batch_size // process_count)
    it = it.batch(recipe.batch_size // process_count, drop_remainder=True, batch_fn=batch_fn)
    if recipe.prefetch > 0:
        it = gex.ThreadPrefetchIterDataset(it, prefetch_buffer_size=recipe.prefetch)
    return it, info


def _check_synthetic_media(recipe: DataRecipe, processor: MediaProcessor | None) -> None:
    from autoglm_jax.config import ConfigError
    for task, what in (("image", "vision"), ("audio", "audio")):
        if task not in recipe.synthetic_tasks:
            continue
        config = getattr(processor, "config", None)
        if processor is None or (config is not None and getattr(config, what, None) is None):
            raise ConfigError(f"field `data.synthetic_tasks`: the {task} task needs a model with "
                              f"{'a vision tower' if task == 'image' else 'an audio encoder'} "
                              "(model_type glm4v or autoglm, e.g. preset tiny-mm)")


def _media_collate(recipe: DataRecipe, processor: Any, images: bool, audio: bool,
                   batch_size: int) -> Callable[[Sequence[dict[str, np.ndarray]]], dict]:
    from autoglm_jax.training import media as M
    config = getattr(processor, "config", None)
    vision = getattr(config, "vision", None)
    audio_cfg = getattr(config, "audio", None)
    merge = vision.spatial_merge_size if vision is not None else 2
    if images and recipe.source == "synthetic":
        pad_grid = tuple(int(v) for v in M.synthetic_image_grid()[0])
    else:
        pad_grid = (1, merge, merge)
    return M.make_collate(
        batch_size, images=images, audio=audio, max_images=recipe.max_images,
        max_audio_windows=recipe.max_audio_windows, pad_grid=pad_grid,
        patch_dim=vision.patch_dim if vision is not None else 1176,
        num_mel_bins=audio_cfg.num_mel_bins if audio_cfg is not None else 80)
