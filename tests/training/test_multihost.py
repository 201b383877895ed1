"""The training CLI under jax.distributed: 2 processes x 2 CPU devices (gloo, 127.0.0.1), mesh
data=2 x tensor=2. A run killed with SIGKILL after a checkpoint and resumed gives the losses of
an uninterrupted 2-process run, and both equal a 1-process run fed the same global batches;
the model the 2-process run exported loads in one process with the same logits."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import grain.experimental as gex
import jax
import numpy as np
import pytest

import autoglm_jax as ag
from autoglm_jax.config import ConfigError
from autoglm_jax.distributed import DistributedConfig
from autoglm_jax.processing.tokenizer import TINY_TOKENIZER_DIR, Tokenizer
from autoglm_jax.training import load_recipe
from autoglm_jax.training.data import make_dataset
from autoglm_jax.training.loop import train
from autoglm_jax.training.metrics import read_jsonl
from tests import FAST_COMPILE_FLAG

ROOT = Path(__file__).resolve().parents[2]
RECIPE = "configs/recipes/tiny-pretrain.toml"
STEPS, EVERY = 12, 4
OVERRIDES = {
    "steps": STEPS,
    "log_every": 1,
    "progress": False,
    "checkpoint": {"every": EVERY},
    "mesh": {"data": 2, "tensor": 2, "rules": "tp"},
    "model": {"num_layers": 1},
    "data": {"seq_len": 32, "batch_size": 4},
}
FLAGS = [
    "--steps",
    str(STEPS),
    "--log-every",
    "1",
    "--no-progress",
    "--checkpoint.every",
    str(EVERY),
    "--mesh.data",
    "2",
    "--mesh.tensor",
    "2",
    "--mesh.rules",
    "tp",
    "--model.num-layers",
    "1",
    "--data.seq-len",
    "32",
    "--data.batch-size",
    "4",
]
TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(run_dir: Path, *extra: str) -> list[subprocess.Popen]:
    """`python -m train pretrain` as processes 0 and 1 of a 2-process run, 2 CPU devices each."""
    env = {
        **os.environ,
        # the suite's optimisation level: compiling is most of a launch
        "XLA_FLAGS": f"--xla_force_host_platform_device_count=2 {FAST_COMPILE_FLAG}",
        "JAX_PLATFORMS": "cpu",
    }
    port = _free_port()
    return [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "train",
                "pretrain",
                "--recipe",
                RECIPE,
                *FLAGS,
                "--run-dir",
                str(run_dir),
                "--distributed.coordinator",
                f"127.0.0.1:{port}",
                "--distributed.num-processes",
                "2",
                "--distributed.process-id",
                str(k),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=open(run_dir.parent / f"{run_dir.name}-{k}.log", "ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        for k in (0, 1)
    ]


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def _finish(procs: list[subprocess.Popen], run_dir: Path) -> None:
    deadline = time.monotonic() + TIMEOUT_S
    try:
        for p in procs:
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pass
    finally:
        _kill(procs)
    logs = [(run_dir.parent / f"{run_dir.name}-{k}.log").read_text()[-2000:] for k in (0, 1)]
    assert [p.returncode for p in procs] == [0, 0], "\n".join(logs)


def _losses(run_dir: Path) -> list[tuple[int, float, int]]:
    return [(r["step"], r["loss"], r["tokens"]) for r in read_jsonl(run_dir / "metrics.jsonl")]


@pytest.mark.slow
def test_two_processes_resume_exactly_and_match_one_process(tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    _finish(_launch(whole), whole)
    assert sorted(
        p.name for p in (whole / "checkpoints" / str(STEPS) / "data_iterator").glob("*.json")
    ) == ["process_0-of-2.json", "process_1-of-2.json"]
    # One writer for host-side files: one TensorBoard file, one metrics line per step.
    assert len(list((whole / "tb").iterdir())) == 1
    assert [s for s, _, _ in _losses(whole)] == list(range(1, STEPS + 1))

    procs = _launch(killed)
    try:  # SIGKILL both processes once the first checkpoint is committed
        deadline = time.monotonic() + TIMEOUT_S
        while not (killed / "checkpoints" / str(EVERY)).is_dir():
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.02)
    finally:
        _kill(procs)
    assert not (killed / "model").exists(), "the run ended before it was killed"
    _finish(_launch(killed, "--resume"), killed)
    assert _losses(killed) == _losses(whole)  # exact: same batches on every process

    # One process with 4 devices, fed the same global batches (process 0's rows, then 1's).
    recipe = load_recipe(RECIPE, {**OVERRIDES, "run_dir": str(tmp_path / "one")})
    tok = Tokenizer.from_dir(TINY_TOKENIZER_DIR)
    halves = [make_dataset(recipe.data, tok, process_index=k, process_count=2)[0] for k in (0, 1)]
    both = gex.ZipIterDataset(halves).map(
        lambda rows: {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}
    )
    one = train(recipe, dataset=both)
    two = _losses(whole)
    assert [h["tokens"] for h in one.history] == [t for _, _, t in two]
    np.testing.assert_allclose([h["loss"] for h in one.history], [x for _, x, _ in two], rtol=2e-5)

    # The 2-process export, loaded in this one process: the same model.
    exported = ag.load(whole / "model")
    assert json.loads((whole / "model" / "autoglm_config.json").read_text())
    ids = np.asarray([[5, 17, 42, 7, 99, 3, 64, 12]], np.int32)
    got = exported.module.apply({"params": exported.params}, ids)
    want = one.model.module.apply({"params": jax.device_get(one.model.params)}, ids)
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=2e-4, rtol=0)

    # Resuming the 2-process checkpoint with another process count is refused.
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\), this run has 1"):
        train(recipe.replace(run_dir=str(killed)), resume=True)


@pytest.mark.parametrize(
    "flags, message",
    [
        (dict(num_processes=2, process_id=0), "coordinator: needed"),
        (dict(coordinator="127.0.0.1:1234", process_id=0), "num-processes: needed"),
        (dict(coordinator="127.0.0.1:1234", num_processes=2), "process-id: needed"),
        (dict(coordinator="localhost", num_processes=2, process_id=0), "expected HOST:PORT"),
        (dict(coordinator="h:1", num_processes=2, process_id=2), "process-id: must be in"),
    ],
)
def test_distributed_flags_are_checked(flags, message):
    with pytest.raises(ConfigError, match=message):
        DistributedConfig(**flags).validate()


def test_cli_refuses_incomplete_distributed_flags():
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "pretrain",
            "--recipe",
            RECIPE,
            "--distributed.coordinator",
            "127.0.0.1:1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode != 0 and "--distributed.num-processes: needed" in out.stderr
