"""Run feedback: metrics.jsonl, TensorBoard event files (no tensorflow), a loss-curve PNG and a
progress bar.

The TensorBoard writer hand-encodes the two protos it needs (Event{wall_time, step,
file_version | summary}, Summary.Value{tag, simple_value}) and frames each as a TFRecord:
u64 length, masked CRC32C of the length, data, masked CRC32C of the data.
"""

from __future__ import annotations

import json
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

# --- CRC32C (Castagnoli), table-driven; records are small -------------------------------------


def _crc_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    c = 0xFFFFFFFF
    for b in data:
        c = _TABLE[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    c = crc32c(data)
    return (((c >> 15) | (c << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --- protobuf wire format (just what Event needs) ----------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    n &= (1 << 64) - 1
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _bytes_field(field: int, data: bytes) -> bytes:
    return _key(field, 2) + _varint(len(data)) + data


def encode_event(
    wall_time: float,
    step: int = 0,
    file_version: str | None = None,
    scalars: Mapping[str, float] | None = None,
) -> bytes:
    """tensorflow.Event: wall_time=1 (double), step=2 (int64), file_version=3, summary=5;
    Summary.value=1; Summary.Value: tag=1, simple_value=2 (float)."""
    out = _key(1, 1) + struct.pack("<d", wall_time) + _key(2, 0) + _varint(step)
    if file_version is not None:
        out += _bytes_field(3, file_version.encode())
    if scalars:
        values = b"".join(
            _bytes_field(1, _bytes_field(1, tag.encode()) + _key(2, 5) + struct.pack("<f", v))
            for tag, v in scalars.items()
        )
        out += _bytes_field(5, values)
    return out


def frame_record(data: bytes) -> bytes:
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def read_records(path: str | Path) -> list[bytes]:
    """The payloads of a TFRecord file, checking both CRCs (for tests and tools)."""
    out = []
    raw = Path(path).read_bytes()
    pos = 0
    while pos < len(raw):
        (n,) = struct.unpack_from("<Q", raw, pos)
        (lcrc,) = struct.unpack_from("<I", raw, pos + 8)
        if lcrc != masked_crc32c(raw[pos : pos + 8]):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        data = raw[pos + 12 : pos + 12 + n]
        (dcrc,) = struct.unpack_from("<I", raw, pos + 12 + n)
        if dcrc != masked_crc32c(data):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        out.append(data)
        pos += 16 + n
    return out


class TensorBoardWriter:
    """Scalars to `<log_dir>/events.out.tfevents.<time>.<host>.<pid>` (TensorBoard reads it)."""

    def __init__(self, log_dir: str | Path):
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = log_dir / name
        self._f = open(self.path, "ab")
        self._f.write(frame_record(encode_event(time.time(), 0, file_version="brain.Event:2")))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        finite = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        if finite:
            self._f.write(frame_record(encode_event(time.time(), step, scalars=finite)))

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        self._f.close()


# --- JSONL + TensorBoard together ---------------------------------------------------------------


class MetricsWriter:
    """Appends one JSON object per logged step to `<run_dir>/metrics.jsonl` and the same scalars
    (under train/) to a TensorBoard event file in `<run_dir>/tb`."""

    def __init__(self, run_dir: str | Path, resume_step: int | None = None):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.jsonl = self.run_dir / "metrics.jsonl"
        # A resumed run rewrites the steps after its checkpoint; a fresh one starts over.
        kept = (
            [
                r
                for r in read_jsonl(self.jsonl)
                if resume_step is not None and r.get("step", 0) <= resume_step
            ]
            if self.jsonl.exists()
            else []
        )
        with open(self.jsonl, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)
        self._f = open(self.jsonl, "a")
        self.tb = TensorBoardWriter(self.run_dir / "tb")

    def write(self, step: int, values: Mapping[str, Any]) -> None:
        record = {"step": step, **{k: _plain(v) for k, v in values.items()}}
        self._f.write(json.dumps(record) + "\n")
        self._f.flush()
        self.tb.scalars(step, {f"train/{k}": v for k, v in record.items() if k != "step"})

    def close(self) -> None:
        self._f.close()
        self.tb.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/inf; keep it readable
    return v


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    out = []
    with open(path) as f:
        for line in f:
            if line.strip():
                out.append(json.loads(line))
    return out


# --- loss curve PNG --------------------------------------------------------------------------


def plot_losses(
    records: Iterable[Mapping[str, Any]],
    path: str | Path,
    keys: tuple[str, ...] = ("loss", "ce", "kl", "hidden_mse"),
) -> Path | None:
    """Loss curves vs step as a PNG: matplotlib when installed, else Pillow; None (and a note
    on stderr) when neither is."""
    records = list(records)
    series = {
        k: [
            (r["step"], r[k])
            for r in records
            if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])
        ]
        for k in keys
    }
    series = {k: v for k, v in series.items() if v}
    path = Path(path)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _plot_pillow(series, path)
    # One panel per series: the total and its terms (ce equals loss when pretraining) would
    # otherwise draw on top of each other.
    n = max(1, len(series))
    fig, axes = plt.subplots(n, 1, figsize=(7, 2.2 * n + 0.6), dpi=100, sharex=True, squeeze=False)
    for ax, (k, pts) in zip(axes[:, 0], series.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], color="C0")
        ax.set_ylabel(k)
        if all(p[1] > 0 for p in pts):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("step")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40)]


def _plot_pillow(series: dict[str, list[tuple[int, float]]], path: Path) -> Path | None:
    try:
        from PIL import Image, ImageDraw
    except ImportError:
        print("loss plot skipped: neither matplotlib nor Pillow is installed", file=sys.stderr)
        return None
    # One panel per series, as with matplotlib.
    w, panel, m = 700, 200, 40
    n = max(1, len(series))
    img = Image.new("RGB", (w, panel * n + m // 2), "white")
    draw = ImageDraw.Draw(img)
    pts = [p for v in series.values() for p in v]
    x0 = min((p[0] for p in pts), default=0)
    x1 = max((p[0] for p in pts), default=1)
    sx = (w - 1.5 * m) / max(x1 - x0, 1)
    for i, (k, v) in enumerate(series.items()):
        top, bottom = i * panel + m // 2, (i + 1) * panel - m // 2
        draw.rectangle([m, top, w - m // 2, bottom], outline="black")
        y0, y1 = min(p[1] for p in v), max(p[1] for p in v)
        sy = (bottom - top - m // 2) / max(y1 - y0, 1e-12)
        colour = _COLOURS[i % len(_COLOURS)]
        xy = [(m + (s - x0) * sx, bottom - (y - y0) * sy) for s, y in v]
        if len(xy) > 1:
            draw.line(xy, fill=colour, width=2)
        draw.text((m + 10, top + 5), f"{k}: {y0:.3g}..{y1:.3g}", fill=colour)
    draw.text((m, panel * n - m // 2 + 5), f"step {x0}..{x1}", fill="black")
    img.save(path)
    return path


# --- progress bar --------------------------------------------------------------------------


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """One status line: step, bar, loss, tokens/s, ETA. Redrawn in place on a terminal; on a
    pipe or file, printed as a plain line about every 10% (and at the end)."""

    def __init__(
        self, total: int, start: int = 0, enabled: bool = True, stream: Any = None, width: int = 24
    ):
        self.total, self.start, self.enabled = total, start, enabled
        self.stream = stream or sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.width = width
        self.t_first: float | None = None  # after the first step (compilation excluded)
        self.step_first = start
        self._last_line = start
        self._tokens = 0.0

    def update(self, step: int, loss: float, tokens: float) -> None:
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first, self.step_first = now, step
            self._tokens = 0.0
        else:
            self._tokens += tokens
        done = step - self.step_first
        elapsed = now - self.t_first
        rate = done / elapsed if elapsed > 0 and done > 0 else float("nan")
        tps = self._tokens / elapsed if elapsed > 0 and done > 0 else float("nan")
        eta = (self.total - step) / rate if rate == rate and rate > 0 else float("nan")
        if not self.enabled:
            return
        frac = step / self.total
        bar = "#" * int(frac * self.width) + "." * (self.width - int(frac * self.width))
        line = f"step {step}/{self.total} [{bar}] loss {loss:.4f} tok/s {tps:,.0f} ETA {_hms(eta)}"
        if self.tty:
            self.stream.write("\r" + line + ("\n" if step >= self.total else ""))
            self.stream.flush()
        elif step >= self.total or step - self._last_line >= max(1, self.total // 10):
            self._last_line = step
            print(line, file=self.stream, flush=True)
