"""Audio front end in numpy: WAV reading, resampling to 16 kHz, Whisper's log-mel spectrogram and
the split of long audio into 30 s windows.

    read_wav(path_or_bytes)          -> (f32[n] mono in [-1, 1], sample_rate)
    resample(x, orig_sr, target_sr)  -> polyphase, Kaiser-windowed sinc (scipy's resample_poly)
    log_mel_spectrogram(x, sr, mels) -> f32[mels, 3000] (transformers' WhisperFeatureExtractor)
    log_mel_windows(x, sr, mels)     -> f32[W, mels, 3000], one row per 30 s window
    load_audio(path_or_bytes, ...)   -> read_wav + log_mel_windows

Only numpy and the standard library are used.
"""

from __future__ import annotations

import dataclasses
import math
import os
import struct
from typing import Any, BinaryIO, Union

import numpy as np

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples per window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames per window

AudioSource = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


class AudioError(ValueError):
    """Audio input that cannot be used; the message names the source and the problem."""


@dataclasses.dataclass(frozen=True)
class Waveform:
    """A decoded clip (what `read_wav` returns), so that a checked clip travels as one value
    and is not decoded twice."""

    samples: np.ndarray  # f32[n] mono in [-1, 1]
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[0] / self.sample_rate


# ----------------------------------------------------------------------------------------
# WAV reading.

_FORMAT_PCM = 0x0001
_FORMAT_IEEE_FLOAT = 0x0003
_FORMAT_EXTENSIBLE = 0xFFFE
_STREAMING_SIZE = 0xFFFFFFFF  # data size written by streaming encoders that cannot seek back


def _read_source(source: AudioSource) -> tuple[bytes, str]:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>"
    if hasattr(source, "read"):
        return source.read(), getattr(source, "name", "<file object>")
    name = os.fspath(source)
    with open(name, "rb") as f:
        return f.read(), str(name)


def _decode_samples(raw: bytes, fmt: int, bits: int, channels: int, name: str) -> np.ndarray:
    """Little-endian interleaved samples -> f32[frames, channels] in [-1, 1]."""
    if fmt == _FORMAT_PCM:
        if bits == 8:  # unsigned, midpoint 128
            x = (np.frombuffer(raw, np.uint8).astype(np.float32) - 128.0) / 128.0
        elif bits == 16:
            x = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
        elif bits == 24:
            b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
            v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
            v = np.where(v >= 1 << 23, v - (1 << 24), v)
            x = v.astype(np.float32) / float(1 << 23)
        elif bits == 32:
            x = (np.frombuffer(raw, "<i4").astype(np.float64) / float(1 << 31)).astype(np.float32)
        else:
            raise AudioError(
                f"{name}: unsupported sample width: {bits}-bit PCM "
                "(supported: 8, 16, 24, 32-bit PCM and 32/64-bit float)"
            )
    elif fmt == _FORMAT_IEEE_FLOAT:
        if bits == 32:
            x = np.frombuffer(raw, "<f4").astype(np.float32)
        elif bits == 64:
            x = np.frombuffer(raw, "<f8").astype(np.float32)
        else:
            raise AudioError(
                f"{name}: unsupported sample width: {bits}-bit float "
                "(supported: 32 and 64-bit float)"
            )
    else:
        raise AudioError(
            f"{name}: unsupported WAV encoding (format tag 0x{fmt:04x}); only PCM "
            "and IEEE float are supported"
        )
    return x.reshape(-1, channels)


def read_wav(source: AudioSource) -> tuple[np.ndarray, int]:
    """Read a RIFF/WAVE file: PCM 8/16/24/32-bit, IEEE float 32/64-bit, and their
    WAVE_FORMAT_EXTENSIBLE forms. Returns (waveform f32[n] in [-1, 1], sample_rate); more than
    one channel is mixed down to mono by averaging.

    `source` is a path, the file's bytes, or a binary file object. Errors are `AudioError`s
    naming the problem (empty file, not a WAV, truncated data, unsupported encoding, no audio).
    The chunks are parsed directly (not with the stdlib `wave` module, which rejects float
    files and silently accepts truncated ones).
    """
    data, name = _read_source(source)
    if len(data) == 0:
        raise AudioError(f"{name}: empty file (0 bytes), expected a WAV file")
    if len(data) < 12 or data[:4] not in (b"RIFF", b"RIFX") or data[8:12] != b"WAVE":
        raise AudioError(f"{name}: not a WAV file (no RIFF/WAVE header; starts with {data[:12]!r})")
    if data[:4] == b"RIFX":
        raise AudioError(f"{name}: big-endian WAV (RIFX) is not supported")
    fmt_chunk: bytes | None = None
    raw: bytes | None = None
    streaming = False
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack("<I", data[pos + 4 : pos + 8])
        body_start = pos + 8
        if chunk_id == b"data":
            available = len(data) - body_start
            if size == _STREAMING_SIZE:  # "until the end of the file"
                size, streaming = available, True
            if size > available:
                raise AudioError(
                    f"{name}: truncated WAV: the data chunk declares {size} bytes "
                    f"but only {available} are present"
                )
            raw = data[body_start : body_start + size]
            break
        if body_start + size > len(data):
            raise AudioError(
                f"{name}: truncated WAV: chunk {chunk_id!r} declares {size} bytes "
                f"but only {len(data) - body_start} are present"
            )
        if chunk_id == b"fmt ":
            fmt_chunk = data[body_start : body_start + size]
        pos = body_start + size + (size & 1)  # chunks are padded to even sizes
    if fmt_chunk is None:
        raise AudioError(f"{name}: truncated or invalid WAV: no `fmt ` chunk before the data")
    if raw is None:
        raise AudioError(f"{name}: truncated or invalid WAV: no `data` chunk")
    if len(fmt_chunk) < 16:
        raise AudioError(f"{name}: invalid WAV: `fmt ` chunk is {len(fmt_chunk)} bytes (< 16)")
    fmt, channels, rate, _, block_align, bits = struct.unpack("<HHIIHH", fmt_chunk[:16])
    if fmt == _FORMAT_EXTENSIBLE:
        if len(fmt_chunk) < 26:
            raise AudioError(
                f"{name}: invalid WAV: WAVE_FORMAT_EXTENSIBLE `fmt ` chunk is "
                f"{len(fmt_chunk)} bytes (< 26)"
            )
        (fmt,) = struct.unpack("<H", fmt_chunk[24:26])  # first 2 bytes of the subformat GUID
    if channels < 1:
        raise AudioError(f"{name}: invalid WAV: {channels} channels")
    if rate < 1:
        raise AudioError(f"{name}: invalid WAV: sample rate {rate}")
    if bits % 8 or bits == 0 or block_align != channels * bits // 8:
        raise AudioError(
            f"{name}: unsupported sample width: {bits} bits per sample with "
            f"block align {block_align} for {channels} channel(s)"
        )
    if streaming:  # a stream cut mid-frame: keep the whole frames
        raw = raw[: len(raw) - len(raw) % block_align]
    if len(raw) % block_align:
        raise AudioError(
            f"{name}: truncated WAV: data is {len(raw)} bytes, not a whole number "
            f"of {block_align}-byte frames"
        )
    if len(raw) == 0:
        raise AudioError(f"{name}: zero-length audio (the WAV has no samples)")
    frames = _decode_samples(raw, fmt, bits, channels, name)
    mono = frames[:, 0] if channels == 1 else frames.mean(axis=1, dtype=np.float32)
    return np.ascontiguousarray(mono, dtype=np.float32), int(rate)


# ----------------------------------------------------------------------------------------
# Resampling.


def _lowpass(up: int, down: int) -> tuple[np.ndarray, int]:
    """scipy.signal.resample_poly's default filter: firwin(2*half+1, 1/max(up, down),
    window=('kaiser', 5.0)) normalised to unit DC gain, times `up`."""
    max_rate = max(up, down)
    half = 10 * max_rate
    m = np.arange(-half, half + 1, dtype=np.float64)
    cutoff = 1.0 / max_rate
    h = cutoff * np.sinc(cutoff * m) * np.kaiser(2 * half + 1, 5.0)
    return h * (up / h.sum()), half


def resample(
    waveform: np.ndarray, orig_sr: int, target_sr: int = SAMPLE_RATE, *, chunk: int = 1 << 16
) -> np.ndarray:
    """Polyphase resampling f32[n] -> f32[ceil(n * target_sr / orig_sr)], zero-phase,
    anti-aliased (same filter and alignment as scipy.signal.resample_poly)."""
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise AudioError(f"resample expects a mono waveform [n], got shape {x.shape}")
    if orig_sr <= 0 or target_sr <= 0:
        raise AudioError(f"sample rates must be positive, got {orig_sr} -> {target_sr}")
    if orig_sr == target_sr:
        return x.astype(np.float32)
    g = math.gcd(int(orig_sr), int(target_sr))
    up, down = int(target_sr) // g, int(orig_sr) // g
    h, half = _lowpass(up, down)
    n_in = x.shape[0]
    n_out = -(-n_in * up // down)
    # Output m sits at m*down in the upsampled grid; with the centred filter,
    # y[m] = sum_i x[i] h[m*down + half - i*up]. Polyphase: phase p = (m*down + half) % up uses
    # taps h[p + j*up] against x[(m*down + half) // up - j].
    taps = -(-h.shape[0] // up)
    h_poly = np.zeros(taps * up)
    h_poly[: h.shape[0]] = h
    h_poly = h_poly.reshape(taps, up).T  # [up, taps]: h_poly[p, j] = h[p + j*up]
    pad = taps
    xp = np.concatenate([np.zeros(pad), x, np.zeros(pad)])
    out = np.empty(n_out, dtype=np.float64)
    j = np.arange(taps)
    for start in range(0, n_out, chunk):
        m = np.arange(start, min(start + chunk, n_out), dtype=np.int64)
        pos = m * down + half
        base, phase = pos // up, pos % up
        idx = base[:, None] - j[None, :] + pad  # into xp; outside x reads zeros
        idx = np.clip(idx, 0, xp.shape[0] - 1)
        out[m] = np.einsum("TX,TX->T", xp[idx], h_poly[phase])
    return out.astype(np.float32)


# ----------------------------------------------------------------------------------------
# Log-mel spectrogram.


def _hz_to_mel(freq: np.ndarray) -> np.ndarray:
    """Slaney's mel scale: linear below 1 kHz, logarithmic above."""
    freq = np.asarray(freq, dtype=np.float64)
    logstep = 27.0 / np.log(6.4)
    return np.where(
        freq >= 1000.0,
        15.0 + np.log(np.maximum(freq, 1e-10) / 1000.0) * logstep,
        3.0 * freq / 200.0,
    )


def _mel_to_hz(mels: np.ndarray) -> np.ndarray:
    mels = np.asarray(mels, dtype=np.float64)
    logstep = np.log(6.4) / 27.0
    return np.where(mels >= 15.0, 1000.0 * np.exp(logstep * (mels - 15.0)), 200.0 * mels / 3.0)


def mel_filter_bank(
    n_mels: int,
    n_fft: int = N_FFT,
    sampling_rate: int = SAMPLE_RATE,
    f_min: float = 0.0,
    f_max: float = 8000.0,
) -> np.ndarray:
    """f64[n_fft/2 + 1, n_mels]: Slaney-scale triangles with Slaney area normalisation
    (librosa's `filters.mel(norm="slaney")`, transformers' `mel_filter_bank(norm="slaney",
    mel_scale="slaney")`)."""
    n_bins = 1 + n_fft // 2
    fft_freqs = np.linspace(0, sampling_rate // 2, n_bins)
    mel_points = np.linspace(_hz_to_mel(f_min), _hz_to_mel(f_max), n_mels + 2)
    edges = _mel_to_hz(mel_points)  # [n_mels + 2] band edges / centres in Hz
    widths = np.diff(edges)
    slopes = edges[None, :] - fft_freqs[:, None]  # [n_bins, n_mels + 2]
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    filters = np.maximum(0.0, np.minimum(down, up))
    return filters * (2.0 / (edges[2:] - edges[:-2]))[None, :]


_FILTER_CACHE: dict[int, np.ndarray] = {}


def _filters(n_mels: int) -> np.ndarray:
    if n_mels not in _FILTER_CACHE:
        _FILTER_CACHE[n_mels] = mel_filter_bank(n_mels)
    return _FILTER_CACHE[n_mels]


def _hann(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def log_mel_spectrogram(
    waveform: np.ndarray, sampling_rate: int = SAMPLE_RATE, n_mels: int = 80
) -> np.ndarray:
    """Whisper's input features for one 30 s window: f32[n_mels, 3000].

    The waveform (mono f32[n], resampled to 16 kHz if `sampling_rate` differs) is zero-padded or
    trimmed to 480000 samples; STFT with n_fft 400, hop 160, periodic Hann, centred with reflect
    padding, last frame dropped; power spectrum; Slaney mel filters 0-8 kHz; log10 of
    max(x, 1e-10); floored at (max - 8); then (x + 4) / 4. For audio longer than 30 s use
    `log_mel_windows` (this function keeps only the first 30 s).
    """
    if n_mels < 1:
        raise AudioError(f"n_mels must be positive, got {n_mels}")
    x = np.asarray(waveform, dtype=np.float64)
    if x.ndim != 1:
        raise AudioError(f"expected a mono waveform [n], got shape {x.shape}")
    if x.shape[0] == 0:
        raise AudioError("zero-length audio: the waveform has no samples")
    if sampling_rate != SAMPLE_RATE:
        x = resample(x, sampling_rate, SAMPLE_RATE).astype(np.float64)
    x = x[:N_SAMPLES]
    x = np.pad(x, (0, N_SAMPLES - x.shape[0]))
    half = N_FFT // 2
    x = np.pad(x, (half, half), mode="reflect")
    n_frames = 1 + (x.shape[0] - N_FFT) // HOP_LENGTH  # 3001; the last one is dropped
    frames = np.lib.stride_tricks.sliding_window_view(x, N_FFT)[::HOP_LENGTH][: n_frames - 1]
    spectrum = np.fft.rfft(frames * _hann(N_FFT), axis=-1)  # [3000, 201]
    power = spectrum.real**2 + spectrum.imag**2
    mel = power @ _filters(n_mels)  # [3000, n_mels]
    log_spec = np.log10(np.maximum(mel, 1e-10)).T
    log_spec = np.maximum(log_spec, log_spec.max() - 8.0)
    return ((log_spec + 4.0) / 4.0).astype(np.float32)


def num_windows(num_samples: int) -> int:
    """How many 30 s windows a 16 kHz waveform of `num_samples` needs (at least one)."""
    return max(1, -(-num_samples // N_SAMPLES))


def window_frames(num_samples: int) -> np.ndarray:
    """i32[W]: mel frames of real audio in each 30 s window of a 16 kHz waveform of
    `num_samples` (the rest of the window is padding): ceil(samples / HOP_LENGTH), as the
    frame-level attention mask of transformers' WhisperFeatureExtractor counts them."""
    left = num_samples - np.arange(num_windows(num_samples)) * N_SAMPLES
    return np.clip(-(-left // HOP_LENGTH), 1, N_FRAMES).astype(np.int32)


def log_mel_windows(
    waveform: np.ndarray,
    sampling_rate: int = SAMPLE_RATE,
    n_mels: int = 80,
    max_seconds: float | None = None,
    return_frames: bool = False,
) -> Any:
    """f32[W, n_mels, 3000]: the waveform resampled to 16 kHz, split into consecutive 30 s
    windows (the last zero-padded), each turned into features by `log_mel_spectrogram`.
    return_frames: (features, `window_frames`), the real frames of each window.

    `max_seconds` (e.g. `AudioConfig.max_audio_seconds`) rejects longer audio with an AudioError.
    """
    x = np.asarray(waveform, dtype=np.float32)
    if x.ndim != 1:
        raise AudioError(f"expected a mono waveform [n], got shape {x.shape}")
    if x.shape[0] == 0:
        raise AudioError("zero-length audio: the waveform has no samples")
    seconds = x.shape[0] / sampling_rate
    if max_seconds is not None and seconds > max_seconds + 1e-9:
        raise AudioError(
            f"audio clip is {seconds:.2f} s long, longer than the configured "
            f"maximum of {max_seconds:g} s"
        )
    if sampling_rate != SAMPLE_RATE:
        x = resample(x, sampling_rate, SAMPLE_RATE)
    w = num_windows(x.shape[0])
    feats = np.stack(
        [
            log_mel_spectrogram(x[i * N_SAMPLES : (i + 1) * N_SAMPLES], SAMPLE_RATE, n_mels)
            for i in range(w)
        ]
    )
    return (feats, window_frames(x.shape[0])) if return_frames else feats


def load_audio(
    source: AudioSource | Waveform,
    max_seconds: float = 120.0,
    n_mels: int = 80,
    return_frames: bool = False,
) -> Any:
    """A WAV file (path, bytes or binary file object) or a decoded `Waveform` -> Whisper
    features f32[W, n_mels, 3000]: read, mixed to mono, resampled to 16 kHz, split into 30 s
    windows (W = ceil(seconds / 30)).
    return_frames: (features, i32[W] real mel frames per window).

    Raises AudioError for unreadable files and for clips longer than `max_seconds`.
    """
    if isinstance(source, Waveform):
        waveform, rate = source.samples, source.sample_rate
    else:
        waveform, rate = read_wav(source)
    try:
        return log_mel_windows(waveform, rate, n_mels, max_seconds, return_frames)
    except AudioError as e:
        name = os.fspath(source) if isinstance(source, (str, os.PathLike)) else "<audio>"
        raise AudioError(f"{name}: {e}") from None


__all__ = [
    "AudioError",
    "CHUNK_SECONDS",
    "HOP_LENGTH",
    "N_FFT",
    "N_FRAMES",
    "N_SAMPLES",
    "SAMPLE_RATE",
    "Waveform",
    "load_audio",
    "log_mel_spectrogram",
    "log_mel_windows",
    "mel_filter_bank",
    "num_windows",
    "read_wav",
    "resample",
    "window_frames",
]
