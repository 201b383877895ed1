"""Shared test setup. Simulated CPU devices must be configured before jax is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Many tests compile the same small programs (the same tiny model under the engine, the same
# train step in several recipes): a compilation cache shared by the test processes compiles
# each once. Programs compiling in under half a second are not worth the disk round trip.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".pytest_cache", "jax"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402


def pytest_collection_modifyitems(config, items):
    if os.environ.get("AUTOGLM_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="AUTOGLM_SKIP_SLOW set")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)
