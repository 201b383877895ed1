"""Every README code block that can run on a CPU runs as written, against the server the README
says to start (on a free port instead of 8000, so tests can run side by side).

Skipped: blocks that name a checkpoint the reader must fetch (`/path/to/...`) and the set-up
blocks (venv, pip install), which CI itself runs as the README's two commands."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from .helpers import LiveServer, launch_server

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text(encoding="utf-8")
BLOCKS = re.findall(r"```(bash|python)\n(.*?)```", README, flags=re.S)


def _runnable(code: str) -> bool:
    return "/path/to" not in code and "venv" not in code and "pip install" not in code


def _commands(code: str) -> list[str]:
    """Shell commands of a bash block: continuation lines joined, comments dropped."""
    joined = re.sub(r"\\\n", " ", code)
    out, current = [], ""
    for line in joined.splitlines():  # a quoted JSON body may span lines
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current = f"{current}\n{line}" if current else line
        try:
            shlex.split(current, comments=True)
        except ValueError:  # an open quote: the command goes on
            continue
        out.append(shlex.join(shlex.split(current, comments=True)))  # trailing comments out
        current = ""
    return out


SERVE = [
    c
    for kind, code in BLOCKS
    if kind == "bash" and _runnable(code)
    for c in _commands(code)
    if c.startswith("python -m infer serve")
]
CURLS = [
    c
    for kind, code in BLOCKS
    if kind == "bash" and _runnable(code)
    for c in _commands(code)
    if c.startswith("curl ")
]
PYTHON = [code for kind, code in BLOCKS if kind == "python" and _runnable(code)]


def test_the_readme_has_what_this_test_runs():
    assert len(SERVE) == 1, SERVE
    assert len(CURLS) >= 5 and len(PYTHON) >= 2


@pytest.fixture(scope="module")
def readme_server(tmp_path_factory, xla_cache) -> LiveServer:
    argv = shlex.split(SERVE[0])[3:]  # after `python -m infer`
    s = launch_server(tmp_path_factory.mktemp("readme_server"), argv, xla_cache)
    yield s
    assert s.stop() == 0, s.log()[-3000:]


@pytest.mark.parametrize("command", CURLS, ids=[c.split("'")[0][:60] for c in CURLS])
def test_readme_curl(readme_server, command):
    command = command.replace("127.0.0.1:8000", f"127.0.0.1:{readme_server.port}")
    proc = subprocess.run(
        f"{command} -sS -w '\\nHTTP %{{http_code}}'",
        shell=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.rstrip().endswith("HTTP 200"), proc.stdout[-2000:]
    assert '"error"' not in proc.stdout, proc.stdout[-2000:]


@pytest.mark.parametrize("code", PYTHON, ids=[f"python-{i}" for i in range(len(PYTHON))])
def test_readme_python(readme_server, code, tmp_path):
    script = tmp_path / "example.py"
    script.write_text(code.replace("127.0.0.1:8000", f"127.0.0.1:{readme_server.port}"))
    proc = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
