"""ruff (configured in pyproject.toml) finds nothing: the formatter would change no file and the
linter (pyflakes, pycodestyle, import order, bugbear) reports nothing."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _ruff(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(exe).exists() and shutil.which(exe) is None:
        pytest.fail("ruff is not installed (it is in the test extra)")
    return subprocess.run([exe, *args], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_ruff_check_finds_nothing():
    out = _ruff("check", "--output-format", "concise", ".")
    assert out.returncode == 0, out.stdout + out.stderr


def test_ruff_format_changes_nothing():
    out = _ruff("format", "--check", ".")
    assert out.returncode == 0, out.stdout + out.stderr
