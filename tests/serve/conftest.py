"""Fixtures of the serve tests: the live servers (see helpers.py) and the tiny tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("httpx")

from .helpers import LiveServer, png_bytes, start_server  # noqa: E402


@pytest.fixture(scope="session")
def xla_cache(request, tmp_path_factory) -> str:
    cache = getattr(request.config, "cache", None)  # absent under -p no:cacheprovider
    if cache is None:
        return str(tmp_path_factory.mktemp("autoglm_serve_xla"))
    return str(cache.mkdir("autoglm_serve_xla"))


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    (d / "red.png").write_bytes(png_bytes())
    return d


@pytest.fixture(scope="session")
def server(tmp_path_factory, xla_cache, media_dir) -> LiveServer:
    """The main server: tiny model, API key, 1 MiB body limit, local media under media_dir."""
    s = start_server(
        tmp_path_factory.mktemp("server"), xla_cache, "--allowed-local-media-path", str(media_dir)
    )
    yield s
    code = s.stop()
    assert code == 0, f"server exited with {code}:\n{s.log()[-3000:]}"
    assert "Traceback" not in s.log(), s.log()[-6000:]


@pytest.fixture(scope="session")
def tokenizer():
    from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer

    return Tokenizer.from_dir(TINY_TOKENIZER_DIR)
