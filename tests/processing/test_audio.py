"""Audio front end: WAV reading, resampling, Whisper log-mel features, 30 s windows."""

from __future__ import annotations

import io
import struct
import wave

import numpy as np
import pytest

from autoglm_jax.processing.audio import (
    N_SAMPLES,
    AudioError,
    load_audio,
    log_mel_spectrogram,
    log_mel_windows,
    mel_filter_bank,
    read_wav,
    resample,
)

SR = 16000


def _wav_bytes(frames: np.ndarray, sampwidth: int, rate: int = SR) -> bytes:
    """frames: integer samples [n, channels] already in the file's encoding (uint8 for 8-bit)."""
    frames = np.asarray(frames)
    if sampwidth == 3:
        v = frames.astype(np.int64).reshape(-1) & 0xFFFFFF
        raw = np.stack([v & 0xFF, (v >> 8) & 0xFF, (v >> 16) & 0xFF], axis=1).astype(np.uint8)
        raw = raw.tobytes()
    else:
        dtype = {1: np.uint8, 2: "<i2", 4: "<i4"}[sampwidth]
        raw = frames.astype(dtype).tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(frames.shape[1])
        w.setsampwidth(sampwidth)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def _riff(fmt_chunk: bytes, data: bytes, extra_chunks: bytes = b"") -> bytes:
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt_chunk)) + fmt_chunk + extra_chunks
    body += b"data" + struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chirp_noise(seconds: float, seed: int = 0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    rng = np.random.default_rng(seed)
    x = 0.5 * np.sin(2 * np.pi * (80 * t + 120 * t**2)) + 0.05 * rng.standard_normal(t.shape)
    return x.astype(np.float32)


# ----------------------------------------------------------------------------------------
# WAV.

_INT_CASES = {  # sample width -> (int samples to write, scale to [-1, 1])
    1: (np.array([0, 1, 64, 127, 128, 129, 200, 255]), lambda v: (v - 128) / 128.0),
    2: (np.array([-32768, -12345, -1, 0, 1, 777, 32767]), lambda v: v / 32768.0),
    3: (
        np.array([-(1 << 23), -4_000_001, -1, 0, 1, 123_456, (1 << 23) - 1]),
        lambda v: v / float(1 << 23),
    ),
    4: (
        np.array([-(1 << 31), -1_234_567_890, -1, 0, 1, 987_654_321, (1 << 31) - 1]),
        lambda v: v / float(1 << 31),
    ),
}


@pytest.mark.parametrize("sampwidth", [1, 2, 3, 4])
def test_pcm_mono_round_trip(sampwidth, tmp_path):
    ints, scale = _INT_CASES[sampwidth]
    path = tmp_path / f"pcm{sampwidth}.wav"
    path.write_bytes(_wav_bytes(ints[:, None], sampwidth, rate=22050))
    x, rate = read_wav(path)
    assert rate == 22050 and x.dtype == np.float32
    np.testing.assert_allclose(x, scale(ints.astype(np.float64)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("sampwidth", [1, 2, 3, 4])
def test_stereo_is_mixed_to_mono(sampwidth):
    ints, scale = _INT_CASES[sampwidth]
    frames = np.stack([ints, ints[::-1]], axis=1)
    data = _wav_bytes(frames, sampwidth)
    x, rate = read_wav(io.BytesIO(data))
    expected = (scale(ints.astype(np.float64)) + scale(ints[::-1].astype(np.float64))) / 2
    assert rate == SR
    np.testing.assert_allclose(x, expected, rtol=0, atol=1e-7)


def test_float_wav_and_extensible_header_with_odd_chunk():
    samples = np.array([[0.25, -0.5], [1.0, -1.0], [0.0, 0.125]], np.float32)
    data = samples.astype("<f4").tobytes()
    plain = struct.pack("<HHIIHH", 3, 2, 8000, 8000 * 8, 8, 32)
    x, rate = read_wav(_riff(plain, data))
    assert rate == 8000
    np.testing.assert_array_equal(x, samples.mean(axis=1))
    # WAVE_FORMAT_EXTENSIBLE: the real format is the subformat GUID's first two bytes (3 =
    # float); an odd-sized LIST chunk before the data is padded to an even size.
    guid = struct.pack("<H", 3) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    ext = (
        struct.pack("<HHIIHH", 0xFFFE, 2, 8000, 8000 * 8, 8, 32)
        + struct.pack("<HHI", 22, 32, 3)
        + guid
    )
    odd = b"LIST" + struct.pack("<I", 3) + b"abc\x00"
    x2, _ = read_wav(_riff(ext, data, extra_chunks=odd))
    np.testing.assert_array_equal(x2, x)


def test_wav_matches_stdlib_wave_reader():
    ints = np.random.default_rng(0).integers(-32768, 32767, size=(1000, 1))
    data = _wav_bytes(ints, 2)
    with wave.open(io.BytesIO(data)) as w:
        ref = np.frombuffer(w.readframes(w.getnframes()), "<i2") / 32768.0
    np.testing.assert_allclose(read_wav(data)[0], ref, atol=1e-7)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"ID3\x04\x00\x00\x00\x00\x00\x00this is an mp3", "not a WAV file"),
        (b"RIFF\x10\x00\x00\x00AVI LIST", "not a WAV file"),
        (
            _wav_bytes(np.zeros((100, 1)), 2)[:-51],
            "truncated WAV: the data chunk declares 200 bytes",
        ),
        (_wav_bytes(np.zeros((0, 1)), 2), "zero-length audio"),
        (
            _riff(struct.pack("<HHIIHH", 1, 1, SR, SR * 2, 2, 12), b"\x00" * 8),
            "unsupported sample width: 12 bits",
        ),
        (
            _riff(struct.pack("<HHIIHH", 2, 1, SR, SR, 1, 8), b"\x00" * 8),
            r"unsupported WAV encoding \(format tag 0x0002\)",
        ),
        (b"RIFF\x04\x00\x00\x00WAVE", "no `fmt ` chunk"),
    ],
)
def test_wav_errors_name_the_problem(data, message):
    with pytest.raises(AudioError, match=message):
        read_wav(data)


def test_error_names_the_file(tmp_path):
    path = tmp_path / "not_audio.wav"
    path.write_bytes(b"hello world, definitely not audio")
    with pytest.raises(AudioError, match=r"not_audio\.wav: not a WAV file"):
        load_audio(path)


# ----------------------------------------------------------------------------------------
# Resampling.


def test_resample_44k1_keeps_length_and_tone():
    t = np.arange(2 * 44100) / 44100
    x = np.sin(2 * np.pi * 1000.0 * t).astype(np.float32)
    y = resample(x, 44100, SR)
    assert y.shape == (32000,) and y.dtype == np.float32
    spectrum = np.abs(np.fft.rfft(y * np.hanning(y.shape[0])))
    peak_hz = np.argmax(spectrum) * SR / y.shape[0]
    assert abs(peak_hz - 1000.0) <= 1.0, peak_hz
    mid = y[4000:-4000]  # away from the edges, amplitude is kept (Kaiser ripple ~0.01 dB)
    assert abs(np.sqrt(2 * np.mean(mid**2)) - 1.0) < 3e-3


def test_resample_removes_content_above_new_nyquist():
    t = np.arange(44100) / 44100
    x = np.sin(2 * np.pi * 11000.0 * t)  # above 8 kHz: would alias to 5 kHz
    y = resample(x, 44100, SR)
    assert np.sqrt(np.mean(y[2000:-2000] ** 2)) < 0.01


@pytest.mark.parametrize("orig", [44100, 48000, 8000])
def test_resample_matches_scipy_resample_poly(orig):
    signal = pytest.importorskip("scipy.signal")
    x = _chirp_noise(0.5)
    x = np.interp(np.arange(int(0.5 * orig)) / orig, np.arange(x.shape[0]) / SR, x)
    g = np.gcd(orig, SR)
    ref = signal.resample_poly(x, SR // g, orig // g)
    y = resample(x, orig, SR)
    assert y.shape == ref.shape
    np.testing.assert_allclose(y, ref, atol=1e-5)


# ----------------------------------------------------------------------------------------
# Log-mel features.


@pytest.mark.parametrize("n_mels", [80, 128])
def test_mel_filters_match_transformers(n_mels):
    audio_utils = pytest.importorskip("transformers.audio_utils")
    ref = audio_utils.mel_filter_bank(
        num_frequency_bins=201,
        num_mel_filters=n_mels,
        min_frequency=0.0,
        max_frequency=8000.0,
        sampling_rate=SR,
        norm="slaney",
        mel_scale="slaney",
    )
    np.testing.assert_allclose(mel_filter_bank(n_mels), ref, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize(
    "seconds, n_mels",
    [(30, 80), (3, 80), (3, 128), (37, 80)],
    ids=["30s-80", "3s-80", "3s-128", "37s-trimmed-80"],
)
def test_log_mel_matches_whisper_feature_extractor(seconds, n_mels):
    tf = pytest.importorskip("transformers")
    x = _chirp_noise(seconds, seed=seconds)
    extractor = tf.WhisperFeatureExtractor(feature_size=n_mels)
    ref = extractor(x, sampling_rate=SR, return_tensors="np").input_features[0]
    ours = log_mel_spectrogram(x, SR, n_mels)
    assert ours.shape == ref.shape == (n_mels, 3000) and ours.dtype == np.float32
    err = float(np.abs(ours - ref).max())
    assert err < 1e-4, err


def test_log_mel_resamples_other_rates():
    x = _chirp_noise(2.0)
    x44 = np.interp(np.arange(2 * 44100) / 44100, np.arange(x.shape[0]) / SR, x)
    np.testing.assert_array_equal(
        log_mel_spectrogram(x44, 44100), log_mel_spectrogram(resample(x44, 44100, SR), SR)
    )


def test_log_mel_rejects_empty_audio():
    with pytest.raises(AudioError, match="zero-length audio"):
        log_mel_spectrogram(np.zeros((0,), np.float32))


# ----------------------------------------------------------------------------------------
# Windows.


def test_70s_clip_splits_into_three_windows():
    ints = np.round(_chirp_noise(70.0, seed=3) * 32767).astype(np.int64)[:, None]
    data = _wav_bytes(ints, 2)
    x, _ = read_wav(data)
    features = load_audio(data, max_seconds=120)
    assert features.shape == (3, 80, 3000) and features.dtype == np.float32
    np.testing.assert_array_equal(features[0], log_mel_spectrogram(x[:N_SAMPLES]))
    np.testing.assert_array_equal(features[1], log_mel_spectrogram(x[N_SAMPLES : 2 * N_SAMPLES]))
    np.testing.assert_array_equal(features[2], log_mel_spectrogram(x[2 * N_SAMPLES :]))


def test_window_count_boundaries():
    assert log_mel_windows(np.zeros(N_SAMPLES, np.float32), n_mels=80).shape[0] == 1
    assert log_mel_windows(np.zeros(N_SAMPLES + 1, np.float32), n_mels=80).shape[0] == 2


def test_clip_past_maximum_is_rejected():
    data = _wav_bytes(np.zeros((6 * SR, 1)), 2)
    with pytest.raises(
        AudioError,
        match=r"6\.00 s long, longer than the configured maximum "
        r"of 5 s",
    ):
        load_audio(data, max_seconds=5)
    assert load_audio(data, max_seconds=6).shape == (1, 80, 3000)
