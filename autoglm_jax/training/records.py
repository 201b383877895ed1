"""Training records: the JSONL source (scanned once: every malformed line or missing media file
is a `DataError` naming the file and line), record validation, and what the pipeline is told
about the data (`SourceInfo`)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import numpy as np

from autoglm_jax.processing.content import ContentRules, parse_messages

FEATURES = ("inputs", "targets", "loss_mask")


class DataError(ValueError):
    """A training record is malformed; the message names the file and line."""


class MediaProcessor(Protocol):
    """Turns a conversation (with image/audio parts) into features (the multimodal hook);
    `media.MultimodalProcessor` is the real one.

    Must return at least `input_ids` i32[L] and `loss_mask` i32[L]; may return `positions`
    (i32[3, L] or [L]), `pixel_values` + `image_grid_thw`, `audio_features`. `where` is
    "file:line" for error messages; media file paths are already absolute.
    """

    def __call__(
        self, messages: Sequence[Mapping[str, Any]], *, where: str
    ) -> dict[str, np.ndarray]: ...


@dataclasses.dataclass
class SourceInfo:
    """What the scan of the JSONL files found."""

    records: int = 0
    skipped: int = 0
    skipped_examples: list[str] = dataclasses.field(default_factory=list)  # first few reasons
    image_records: int = 0  # records with image parts
    audio_records: int = 0  # records with audio parts
    images: bool = False  # batches carry pixel_values (set by make_dataset)
    audio: bool = False  # batches carry input_features


# --- record validation -------------------------------------------------------------------


def content_rules(base_dir: Path | str) -> ContentRules:
    """Training's content policy: local files relative to the JSONL's folder; parts of other
    types are left to the chat template."""
    return ContentRules(refuse_unknown=False, base_dir=str(base_dir))


def _check_messages(messages: Any, base_dir: Path) -> set[str]:
    """Validates a chat record; the media kinds it holds ({"image", "audio"}). Raises
    ValueError / FileNotFoundError with a message that the caller prefixes. Media files are
    only looked for here; they are read when the example is."""
    if not isinstance(messages, list) or not messages:
        raise ValueError("`messages` must be a non-empty list")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise ValueError(f"messages[{i}] must be an object with a string `role`")
    content = parse_messages(messages, content_rules(base_dir), load=False)
    for item in content.media:
        if item.path is not None and not Path(item.path).is_file():
            raise FileNotFoundError(f"{item.part_type} file not found: {item.path}")
    if not any(m["role"] == "assistant" for m in messages):
        raise ValueError("no assistant message (nothing to train on)")
    return content.kinds


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
    `sizes` i64[len]: each record's line length in bytes, a cheap stand-in for its token
    count (what length grouping sorts by).
    """

    def __init__(
        self,
        paths: Sequence[str | Path],
        kind: str,
        *,
        skip_bad_records: bool = False,
        allow_media: bool = False,
    ):
        if kind not in ("chat", "text"):
            raise ValueError(f"kind must be 'chat' or 'text', got {kind!r}")
        self.kind = kind
        self.paths = [Path(p).resolve() for p in paths]
        self.info = SourceInfo()
        self._index: list[tuple[int, int, int]] = []  # (path index, line number, byte offset)
        self._sizes: list[int] = []
        for pi, path in enumerate(self.paths):
            if not path.is_file():
                raise FileNotFoundError(f"{path}: JSONL file not found")
            self._scan(pi, path, skip_bad_records, allow_media)
        self.info.records = len(self._index)
        if not self._index:
            raise DataError(
                f"no usable records in {', '.join(map(str, self.paths))} "
                f"({self.info.skipped} skipped)"
            )

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
                    kind = "invalid JSON: " if isinstance(e, json.JSONDecodeError) else ""
                    reason = f"{where}: {kind}{e}"
                    if not skip:
                        raise DataError(
                            reason + " (set data.skip_bad_records to skip such lines)"
                        ) from None
                    self.info.skipped += 1
                    if len(self.info.skipped_examples) < 5:
                        self.info.skipped_examples.append(reason)
                    continue
                if kinds and not allow_media:
                    raise DataError(
                        f"{where}: record has {'/'.join(sorted(kinds))} parts, but the model has "
                        "no image/audio encoder (train a glm4v or autoglm model, e.g. preset "
                        "tiny-mm, or pass a media_processor to make_dataset)"
                    )
                self.info.image_records += "image" in kinds
                self.info.audio_records += "audio" in kinds
                self._index.append((pi, line_no, start))
                self._sizes.append(len(raw))

    def __len__(self) -> int:
        return len(self._index)

    @property
    def sizes(self) -> np.ndarray:
        return np.asarray(self._sizes, np.int64)

    def __getitem__(self, i: int) -> dict[str, Any]:
        pi, line_no, offset = self._index[i]
        path = self.paths[pi]
        with open(path, "rb") as f:
            f.seek(offset)
            record = json.loads(f.readline())
        return {"record": record, "where": f"{path}:{line_no}", "base_dir": str(path.parent)}

    def __repr__(self) -> str:
        return f"JsonlSource({[str(p) for p in self.paths]}, kind={self.kind!r})"
