"""Shared test setup. Simulated CPU devices must be configured before jax is imported."""

import atexit
import os
import shutil
import tempfile

# LLVM's optimisation passes are most of XLA's CPU compile time, and the tests compile far
# more than they run: level 0 makes the suite faster (the same float semantics; no speed is
# measured by a test).
os.environ.setdefault(
    "XLA_FLAGS", "--xla_force_host_platform_device_count=8 --xla_backend_optimization_level=0"
)
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One persistent compilation cache for the run, made by the xdist controller and inherited by
# its workers: tests build the same tiny programs many times over, each from new closures, so
# jit's in-memory cache misses where this one (keyed on the program text) hits.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="autoglm-jax-test-cache-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    # Slow tests first: xdist then starts the longest one at once on one worker while the
    # other works through the rest, instead of leaving it for last on an otherwise idle run.
    items.sort(key=lambda item: "slow" not in item.keywords)
    if os.environ.get("AUTOGLM_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="AUTOGLM_SKIP_SLOW set")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
