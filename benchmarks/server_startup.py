"""Time to listening: start `python -m infer serve` (extra flags after `--`) twice with one
fresh compilation-cache folder, the first run cold (empty cache) and the second warm, and print
the seconds from launch until /health answers 200, as one JSON line.

    python benchmarks/server_startup.py -- --model tiny
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def time_to_listen(extra: list[str], cache: str, timeout: float = 600.0) -> float:
    port = _port()
    cmd = [
        sys.executable,
        "-m",
        "infer",
        "serve",
        "--port",
        str(port),
        "--compilation-cache-dir",
        cache,
        "--uvicorn-log-level",
        "warning",
        *extra,
    ]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        while time.perf_counter() - start < timeout:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited ({proc.returncode}):\n{proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.1)
        raise SystemExit(f"not listening after {timeout} s")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> None:
    extra = sys.argv[sys.argv.index("--") + 1 :] if "--" in sys.argv else ["--model", "tiny"]
    with tempfile.TemporaryDirectory() as cache:
        cold = time_to_listen(extra, cache)
        warm = time_to_listen(extra, cache)
    print(
        json.dumps(
            {
                "flags": extra,
                "cold_s": round(cold, 1),
                "warm_s": round(warm, 1),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
