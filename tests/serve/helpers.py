"""Live servers and helpers for the serve tests: `python -m infer serve --model tiny` in a
subprocess on 127.0.0.1 with a free port (streaming needs a real socket; in-process
test clients buffer whole responses), media builders and an SSE parser.

Both servers use the same engine shapes, so the JAX compilation cache (kept in .pytest_cache)
lets the second, and every later run, skip the compile-heavy warm-up.
"""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from tests import FAST_COMPILE_FLAG

API_KEY = "sk-test-key"
MODEL = "tiny"
MAX_MODEL_LEN = 256
MAX_BODY = 1 << 20

# Shapes shared by every server (the compilation cache key); limits vary per server.
ENGINE_FLAGS = [
    "--max-model-len",
    str(MAX_MODEL_LEN),
    "--max-num-batched-tokens",
    "64",
    "--max-num-seqs",
    "64",
    "--block-size",
    "8",
    "--num-gpu-blocks-override",
    "2100",
]

STARTUP_TIMEOUT = 300.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path):
        self.proc = proc
        self.port = port
        self.log_path = log_path
        self.url = f"http://127.0.0.1:{port}"
        self.base_url = f"{self.url}/v1"
        self.headers = {"Authorization": f"Bearer {API_KEY}"}
        self.http = httpx.Client(base_url=self.url, headers=self.headers, timeout=60.0)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.http.post(path, json=body, **kw)

    def metrics(self) -> dict[str, float]:
        from autoglm_jax.serve.metrics import parse_text

        return parse_text(self.http.get("/metrics").text)

    def metric(self, name: str, **labels: str) -> float:
        from autoglm_jax.serve.metrics import sample

        want = [f'{k}="{v}"' for k, v in labels.items()]
        return sample(self.metrics(), name, lambda text: all(w in text for w in want))

    def wait_idle(self, timeout: float = 20.0) -> dict[str, float]:
        """Metrics once nothing runs or waits and every KV page is free again."""
        deadline = time.monotonic() + timeout
        while True:
            m = self.metrics()
            get = lambda n, m=m: next(v for k, v in m.items() if k.startswith(n + "{"))
            idle = (
                get("vllm:num_requests_running") == 0
                and get("vllm:num_requests_waiting") == 0
                and get("autoglm:kv_cache_free_pages") == get("autoglm:kv_cache_pages")
            )
            if idle or time.monotonic() > deadline:
                return {
                    "running": get("vllm:num_requests_running"),
                    "waiting": get("vllm:num_requests_waiting"),
                    "free_pages": get("autoglm:kv_cache_free_pages"),
                    "pages": get("autoglm:kv_cache_pages"),
                    "kv_usage": get("vllm:kv_cache_usage_perc"),
                }
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        self.http.close()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode


def start_server(directory: Path, cache_dir: str, *extra: str) -> LiveServer:
    """The tests' server: tiny model, API key, small body limit, small engine shapes."""
    return launch_server(
        directory,
        [
            "serve",
            "--model",
            MODEL,
            "--api-key",
            API_KEY,
            "--max-request-body-bytes",
            str(MAX_BODY),
            *ENGINE_FLAGS,
            *extra,
        ],
        cache_dir,
    )


def launch_server(directory: Path, argv: list[str], cache_dir: str) -> LiveServer:
    """`python -m infer <argv>` on a free port, healthy (or a RuntimeError with its log)."""
    directory.mkdir(parents=True, exist_ok=True)
    log_path = directory / "server.log"
    env = dict(os.environ, JAX_PLATFORMS="cpu", TOKENIZERS_PARALLELISM="false")
    # One CPU device is enough for the server; the suite's optimisation level, since starting
    # a server is mostly compiling its warm-up steps.
    env["XLA_FLAGS"] = FAST_COMPILE_FLAG
    for _attempt in range(3):
        port = _free_port()
        cmd = [
            sys.executable,
            "-m",
            "infer",
            *argv,
            "--port",
            str(port),
            "--compilation-cache-dir",
            cache_dir,
            "--uvicorn-log-level",
            "warning",
        ]
        with open(log_path, "w") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=Path(__file__).resolve().parents[2],
            )
        server = LiveServer(proc, port, log_path)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if httpx.get(f"{server.url}/health", timeout=2.0).status_code == 200:
                    return server
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        text = server.log()
        server.stop(signal.SIGKILL)
        if "address already in use" not in text.lower():
            raise RuntimeError(f"server did not become healthy; its log:\n{text[-4000:]}")
    raise RuntimeError("could not find a free port for the server")


def chat_prompt_tokens(tokenizer, messages: list[dict], **template_kwargs: Any) -> int:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, **template_kwargs)
    return len(tokenizer.encode(text))


def png_bytes(size: tuple[int, int] = (32, 24), color=(200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str) -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def wav_bytes(seconds: float = 0.25, rate: int = 16000) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    samples = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return buf.getvalue()


def parse_sse(lines: list[str]) -> tuple[list[dict], bool]:
    """(JSON events, whether [DONE] ended the stream) from SSE lines; comments are skipped."""
    events, done = [], False
    for line in lines:
        if not line or line.startswith(":"):
            continue
        assert line.startswith("data: "), line
        payload = line[len("data: ") :]
        assert not done, "data after [DONE]"
        if payload == "[DONE]":
            done = True
        else:
            events.append(json.loads(payload))
    return events, done


def is_openai_error(body: Any, status: int) -> bool:
    err = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(err, dict)
        and isinstance(err.get("message"), str)
        and err["message"]
        and isinstance(err.get("type"), str)
        and err.get("code") == status
        and "param" in err
    )
