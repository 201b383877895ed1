"""Shared test setup. Simulated CPU devices must be configured before jax is imported."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
