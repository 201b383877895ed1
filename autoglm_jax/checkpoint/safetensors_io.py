"""A small safetensors reader/writer over numpy memory maps.

We parse the format ourselves (8-byte little-endian header size, JSON header, raw data) so that
tensors are read one at a time without loading a file, bf16 works through ml_dtypes, and every
problem (truncated file, corrupt header, missing key) raises an error naming the file and key.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Iterable

import ml_dtypes
import numpy as np

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
}
_NAMES = {v: k for k, v in _DTYPES.items()}

_MAX_HEADER = 100 * 1024 * 1024


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt or does not fit the model; names file and key."""


class SafetensorsFile:
    """Lazy access to the tensors of one .safetensors file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        if size < 8:
            raise CheckpointError(f"{self.path}: truncated safetensors file ({size} bytes)")
        with open(self.path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            if header_len > min(_MAX_HEADER, size - 8):
                raise CheckpointError(
                    f"{self.path}: corrupt or truncated safetensors header (header size "
                    f"{header_len} bytes, file size {size} bytes)"
                )
            raw = f.read(header_len)
        try:
            header = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{self.path}: corrupt safetensors header: {e}") from None
        if not isinstance(header, dict):
            raise CheckpointError(f"{self.path}: corrupt safetensors header (not an object)")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + header_len
        self._entries = header
        data_size = size - self._data_start
        for key, entry in header.items():
            try:
                dtype = _DTYPES[entry["dtype"]]
                begin, end = entry["data_offsets"]
                shape = tuple(int(s) for s in entry["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(
                    f"{self.path}: key `{key}`: corrupt header entry {entry!r}"
                ) from None
            if end > data_size:
                raise CheckpointError(
                    f"{self.path}: key `{key}`: truncated file (data ends at byte {end}, "
                    f"only {data_size} bytes of data present)"
                )
            if end - begin != int(np.prod(shape)) * dtype.itemsize:
                raise CheckpointError(
                    f"{self.path}: key `{key}`: byte range {begin}:{end} does not match "
                    f"shape {list(shape)} of {entry['dtype']}"
                )
        self._mmap: np.memmap | None = None

    def keys(self) -> list[str]:
        return list(self._entries)

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._entries[key]["shape"])

    def get(self, key: str) -> np.ndarray:
        """The tensor as a numpy array (a copy, so the file can be closed)."""
        if key not in self._entries:
            raise CheckpointError(f"{self.path}: key `{key}` not found")
        if self._mmap is None:
            self._mmap = np.memmap(self.path, dtype=np.uint8, mode="r")
        entry = self._entries[key]
        begin, end = entry["data_offsets"]
        raw = self._mmap[self._data_start + begin : self._data_start + end]
        return np.frombuffer(raw.tobytes(), dtype=_DTYPES[entry["dtype"]]).reshape(entry["shape"])


def save_file(
    tensors: dict[str, np.ndarray], path: str | os.PathLike, metadata: dict[str, str] | None = None
) -> None:
    """Write tensors to `path` atomically (a temp file, then rename)."""
    path = Path(path)
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    arrays = []
    for key in sorted(tensors):
        arr = np.ascontiguousarray(tensors[key])
        if arr.dtype not in _NAMES:
            raise CheckpointError(f"{path}: key `{key}`: unsupported dtype {arr.dtype}")
        header[key] = {
            "dtype": _NAMES[arr.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + arr.nbytes],
        }
        offset += arr.nbytes
        arrays.append(arr)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)


class SafetensorsIndex:
    """A checkpoint directory: model.safetensors, or shards listed in model.safetensors.index.json
    (or any *.safetensors files when neither exists)."""

    def __init__(self, directory: str | os.PathLike):
        self.dir = Path(directory)
        index = self.dir / "model.safetensors.index.json"
        single = self.dir / "model.safetensors"
        self._files: dict[str, SafetensorsFile] = {}
        self._key_to_file: dict[str, str] = {}
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: invalid index file: {e!r}") from None
            for key, name in weight_map.items():
                self._key_to_file[key] = name
            for name in sorted(set(weight_map.values())):
                self._files[name] = SafetensorsFile(self.dir / name)
                missing = set(k for k, n in weight_map.items() if n == name) - set(
                    self._files[name].keys()
                )
                if missing:
                    raise CheckpointError(
                        f"{self.dir / name}: keys listed in {index.name} are absent from the "
                        f"file: {sorted(missing)[:5]}"
                    )
        else:
            names = (
                ["model.safetensors"]
                if single.exists()
                else sorted(p.name for p in self.dir.glob("*.safetensors"))
            )
            if not names:
                raise CheckpointError(
                    f"{self.dir}: no model.safetensors, "
                    "model.safetensors.index.json or *.safetensors file"
                )
            for name in names:
                self._files[name] = SafetensorsFile(self.dir / name)
                for key in self._files[name].keys():
                    self._key_to_file[key] = name

    def keys(self) -> Iterable[str]:
        return self._key_to_file.keys()

    def file_of(self, key: str) -> Path:
        return self.dir / self._key_to_file[key]

    def shape(self, key: str) -> tuple[int, ...]:
        return self._files[self._key_to_file[key]].shape(key)

    def get(self, key: str) -> np.ndarray:
        if key not in self._key_to_file:
            raise CheckpointError(f"{self.dir}: key `{key}` not found in the checkpoint")
        return self._files[self._key_to_file[key]].get(key)
