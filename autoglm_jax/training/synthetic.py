"""Synthetic tasks whose answers need the prompt, each sample a pure function of (seed, index).

Text tasks:
  count    "How many b in abbcb?" -> "3"
  copy     "Copy: kqzt"           -> "kqzt"
  reverse  "Reverse: kqzt"        -> "tzqk"
  add      "17+5="                -> "22"

Multimodal tasks (for glm4v / autoglm models; the training pipeline preprocesses them with the
inference code, `engine.multimodal.prepare`):
  image    a 64x64 picture of 1-4 same-coloured shapes in the cells of a 2x2 grid:
           "How many shapes are there?" -> "3", "Which shape is drawn?" -> "circle",
           "What colour are the shapes?" -> "red", and for a single shape
           "Where is the shape?" -> "top left". The part is {"type": "image",
           "image": uint8[64, 64, 3]} (what `process_images` reads).
  audio    1-5 beeps at one pitch: "How many beeps do you hear?" -> "4",
           "Is the pitch low, mid or high?" -> "high". The part is {"type": "audio",
           "audio": <16 kHz 16-bit mono WAV bytes>} (what `load_audio` reads, as for an
           uploaded file); `audio_waveform` gives the float samples it was written from.

`sample(seed, i, tasks)` draws from any mix of them.
"""

from __future__ import annotations

import dataclasses
import io
import wave
from typing import Any, Sequence

import numpy as np

TEXT_TASKS = ("count", "copy", "reverse", "add")
MEDIA_TASKS = ("image", "audio")
TASKS = TEXT_TASKS + MEDIA_TASKS
ALPHABET = "abcdefgh"

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
CELLS = ("top left", "top right", "bottom left", "bottom right")  # cell k: row k // 2, col k % 2
IMAGE_SIZE = 64
PITCHES: dict[str, float] = {"low": 440.0, "mid": 880.0, "high": 1760.0}
SAMPLE_RATE = 16_000


@dataclasses.dataclass(frozen=True)
class Sample:
    """One question/answer conversation. `labels` holds the ground truth the answer states."""

    task: str
    messages: tuple[dict[str, Any], ...]
    answer: str
    labels: dict[str, Any]


def _rng(seed: int, index: int, salt: int = 0) -> np.random.Generator:
    # SeedSequence + PCG64 are stable across numpy versions: same (seed, index), same sample.
    return np.random.default_rng([seed, index, salt])


def _qa(task: str, question: Any, answer: str, labels: dict[str, Any]) -> Sample:
    return Sample(
        task,
        ({"role": "user", "content": question}, {"role": "assistant", "content": answer}),
        answer,
        labels,
    )


def _word(rng: np.random.Generator, max_len: int, min_len: int = 1) -> str:
    n = int(rng.integers(min_len, max_len + 1))
    return "".join(rng.choice(list(ALPHABET), size=n))


def text_sample(
    seed: int, index: int, tasks: Sequence[str] = TEXT_TASKS, max_len: int = 8
) -> Sample:
    """The index-th text sample of the stream seeded by `seed`, drawn from `tasks`."""
    for t in tasks:
        if t not in TEXT_TASKS:
            raise ValueError(f"unknown synthetic task {t!r} (have {list(TEXT_TASKS)})")
    rng = _rng(seed, index)
    task = tasks[int(rng.integers(len(tasks)))]
    if task == "count":
        s = _word(rng, max_len, min_len=2)
        c = s[int(rng.integers(len(s)))] if rng.random() < 0.8 else str(rng.choice(list(ALPHABET)))
        n = s.count(c)
        return _qa(task, f"How many {c} in {s}?", str(n), {"string": s, "char": c, "count": n})
    if task == "copy":
        s = _word(rng, max_len)
        return _qa(task, f"Copy: {s}", s, {"string": s})
    if task == "reverse":
        s = _word(rng, max_len)
        return _qa(task, f"Reverse: {s}", s[::-1], {"string": s})
    a, b = (int(x) for x in rng.integers(0, 100, size=2))
    return _qa(task, f"{a}+{b}=", str(a + b), {"a": a, "b": b, "sum": a + b})


# --- images ----------------------------------------------------------------------------------


def _shape_mask(kind: str, size: int) -> np.ndarray:
    """bool[size, size] of one filled shape."""
    y, x = np.mgrid[:size, :size] + 0.5
    c = size / 2
    if kind == "circle":
        return (x - c) ** 2 + (y - c) ** 2 <= (0.45 * size) ** 2
    if kind == "square":
        m = int(0.1 * size)
        out = np.zeros((size, size), bool)
        out[m : size - m, m : size - m] = True
        return out
    # triangle: apex at the top, base at the bottom
    half = (y / size) * 0.45 * size
    return (y >= 0.1 * size) & (y <= 0.9 * size) & (np.abs(x - c) <= half)


def image_sample(seed: int, index: int, size: int = IMAGE_SIZE) -> Sample:
    """A picture of 1-4 shapes of one kind and colour on a grey background, in distinct cells
    of a 2x2 grid (so they never touch), and a question about count, shape or colour, or,
    for a single shape, its cell. labels: shape, colour, count, cells (names, sorted).

    The user part holds {"type": "image", "image": uint8[size, size, 3]}.
    """
    rng = _rng(seed, index, salt=1)
    kind = SHAPES[int(rng.integers(len(SHAPES)))]
    colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
    count = int(rng.integers(1, 5))
    img = np.full((size, size, 3), 128, np.uint8)
    cell = size // 2
    cells = sorted(int(k) for k in rng.permutation(4)[:count])
    for k in cells:
        shape_size = int(rng.integers(cell // 2, cell - 2))
        top = (k // 2) * cell + int(rng.integers(1, cell - shape_size))
        left = (k % 2) * cell + int(rng.integers(1, cell - shape_size))
        mask = _shape_mask(kind, shape_size)
        img[top : top + shape_size, left : left + shape_size][mask] = COLOURS[colour]
    questions = [
        ("How many shapes are there?", str(count)),
        ("Which shape is drawn?", kind),
        ("What colour are the shapes?", colour),
    ]
    if count == 1:
        questions.append(("Where is the shape?", CELLS[cells[0]]))
    question, answer = questions[int(rng.integers(len(questions)))]
    content = [{"type": "image", "image": img}, {"type": "text", "text": question}]
    return _qa(
        "image",
        content,
        answer,
        {"shape": kind, "colour": colour, "count": count, "cells": [CELLS[k] for k in cells]},
    )


# --- audio -----------------------------------------------------------------------------------


def audio_waveform(
    seed: int, index: int, sample_rate: int = SAMPLE_RATE
) -> tuple[np.ndarray, dict[str, Any], str, str]:
    """(f32[N] waveform, labels, question, answer) of the index-th audio sample."""
    rng = _rng(seed, index, salt=2)
    beeps = int(rng.integers(1, 6))
    pitch = list(PITCHES)[int(rng.integers(len(PITCHES)))]
    tone, gap = int(0.1 * sample_rate), int(0.1 * sample_rate)
    lead = int(rng.integers(0, gap))
    signal = np.zeros(lead + beeps * (tone + gap) + gap, np.float32)
    t = np.arange(tone) / sample_rate
    ramp = np.minimum(1.0, np.minimum(np.arange(tone), np.arange(tone)[::-1]) / 40.0)
    beep = (0.5 * np.sin(2 * np.pi * PITCHES[pitch] * t) * ramp).astype(np.float32)
    for i in range(beeps):
        start = lead + i * (tone + gap)
        signal[start : start + tone] = beep
    signal += rng.normal(0.0, 0.01, signal.shape).astype(np.float32)
    question, answer = [
        ("How many beeps do you hear?", str(beeps)),
        ("Is the pitch low, mid or high?", pitch),
    ][int(rng.integers(2))]
    return signal, {"beeps": beeps, "pitch": pitch}, question, answer


def wav_bytes(waveform: np.ndarray, sample_rate: int = SAMPLE_RATE) -> bytes:
    """A mono 16-bit PCM WAV file of waveform f32[N] in [-1, 1]."""
    pcm = np.round(np.clip(waveform, -1.0, 1.0) * 32767.0).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(pcm.tobytes())
    return buf.getvalue()


def audio_sample(seed: int, index: int, sample_rate: int = SAMPLE_RATE) -> Sample:
    """1-5 beeps (0.1 s tone, 0.1 s gap) at one pitch (440, 880 or 1760 Hz), after a random
    lead-in, with a little noise; asks how many beeps or which pitch.

    The user part holds {"type": "audio", "audio": <WAV bytes>} (see `audio_waveform`).
    """
    waveform, labels, question, answer = audio_waveform(seed, index, sample_rate)
    content = [
        {"type": "audio", "audio": wav_bytes(waveform, sample_rate)},
        {"type": "text", "text": question},
    ]
    return _qa("audio", content, answer, labels)


def sample(seed: int, index: int, tasks: Sequence[str] = TEXT_TASKS, max_len: int = 8) -> Sample:
    """The index-th sample of the stream seeded by `seed`, drawn from `tasks` (any of TASKS).
    With text tasks only this is `text_sample` (the same stream as before media existed)."""
    for t in tasks:
        if t not in TASKS:
            raise ValueError(f"unknown synthetic task {t!r} (have {list(TASKS)})")
    if all(t in TEXT_TASKS for t in tasks):
        return text_sample(seed, index, tasks, max_len)
    task = tasks[int(_rng(seed, index, salt=3).integers(len(tasks)))]
    if task == "image":
        return image_sample(seed, index)
    if task == "audio":
        return audio_sample(seed, index)
    return text_sample(seed, index, (task,), max_len)
