"""Shared test setup. Simulated CPU devices must be configured before jax is imported."""

import atexit
import os
import shutil
import tempfile

from tests import FAST_COMPILE_FLAG

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count=8 {FAST_COMPILE_FLAG}")
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
    items.sort(key=_order)  # stable: collection order within each rank
    if os.environ.get("AUTOGLM_SKIP_SLOW"):
        skip = pytest.mark.skip(reason="AUTOGLM_SKIP_SLOW set")
        for item in items:
            if "slow" in item.keywords:
                item.add_marker(skip)


# Modules whose tests share an expensive module- or session-scoped fixture (a live server is
# ~25 s of compiling on 2 cores; reference models saved with transformers; a trained teacher):
# the tests of one group go to one xdist worker, so each such fixture is set up once, not once
# per worker. (xdist's `--dist loadgroup` does not group under pytest 9: it renames
# `item._nodeid`, which pytest no longer reads.)
SERVER = "the session-scoped tiny server (tests/serve/conftest.py)"
ONE_WORKER_GROUPS = {
    **{
        f"tests/serve/{name}.py": SERVER
        for name in (
            "test_config_metrics",
            "test_errors",
            "test_langchain",
            "test_load",
            "test_openai_client",
        )
    },
    **{
        module: module
        for module in (
            "tests/serve/test_readme.py",
            "tests/serve/test_multimodal.py",
            "tests/serve/test_queue.py",
            "tests/test_glm.py",
            "tests/test_composite.py",
            "tests/test_sharding.py",
            "tests/families/test_llama.py",
            "tests/families/test_qwen2.py",
            "tests/nn/test_vit.py",
            "tests/nn/test_glm4v.py",
            "tests/nn/test_audio.py",
            "tests/nn/test_vision.py",
            "tests/nn/test_fusion.py",
            "tests/compress/test_cli.py",
            "tests/compress/test_multimodal_compress.py",
            "tests/compress/test_prune.py",
            "tests/training/test_cli.py",
            "tests/training/test_step.py",
            "tests/training/test_multimodal.py",
            "tests/engine/test_multimodal.py",
            "tests/quant/test_engine_quant.py",
            "tests/processing/test_tokenizer.py",
        )
    },
}


def _module(nodeid: str) -> str:
    """tests/x/test_y.py of the node id tests/x/test_y.py::test_z[param]."""
    return nodeid.split("::", 1)[0]


def _order(item) -> int:
    # Slow tests first, then the grouped modules (the largest units of work), then the rest:
    # xdist starts the long ones at once and the many short tests even out the two workers.
    if "slow" in item.keywords:
        return 0
    return 1 if _module(item.nodeid) in ONE_WORKER_GROUPS else 2


def pytest_xdist_make_scheduler(config, log):
    from xdist.scheduler import LoadScopeScheduling

    class Grouped(LoadScopeScheduling):
        """Like `--dist load` (a test at a time, in collection order), but each group of
        ONE_WORKER_GROUPS is one unit of work."""

        def _split_scope(self, nodeid: str) -> str:
            return ONE_WORKER_GROUPS.get(_module(nodeid), nodeid)

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems
    return Grouped(config, log)
