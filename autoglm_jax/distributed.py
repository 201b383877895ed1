"""Multi-process runs: joining one with `jax.distributed`, and keeping host-side writes to one
process.

    initialize(DistributedConfig(coordinator="10.0.0.1:1234", num_processes=2, process_id=k))
    mesh = ag.make_mesh(data=2, tensor=jax.local_device_count())   # every process's devices

Every process runs the same program; `initialize` must come before anything touches a device.
Files every process needs (checkpoints) are written by all of them through Orbax, which writes
each shard once; files that are host-side only (configs, tokenizer, metrics, TensorBoard, plots)
are written by the primary process (`is_primary`), and `barrier` orders the two.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import jax

from autoglm_jax.config import ConfigError


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """How this process joins a multi-process run (`jax.distributed.initialize`). The default
    is a single process: nothing is initialized."""

    coordinator: str = ""
    """HOST:PORT where process 0 serves the coordinator (every process passes the same one);
    empty: a single process, unless `auto`."""
    num_processes: int | None = None
    """Processes in the run (with `coordinator`)."""
    process_id: int | None = None
    """This process's index, 0 .. num_processes - 1 (process 0 hosts the coordinator)."""
    auto: bool = False
    """Let jax detect the cluster and fill in what is not given: SLURM, Open MPI, Kubernetes,
    Cloud TPU, or JAX_COORDINATOR_ADDRESS (JAX_LOCAL_DEVICE_IDS picks this process's GPUs)."""
    cpu_collectives: Literal["gloo", "mpi"] = "gloo"
    """How CPU devices of different processes talk (CPU runs only; GPUs use NCCL)."""
    timeout_s: int = 300
    """How long to wait for every process to join."""

    @property
    def enabled(self) -> bool:
        return (
            bool(self.coordinator)
            or self.auto
            or self.num_processes is not None
            or self.process_id is not None
        )

    def validate(self) -> "DistributedConfig":
        """Errors name the flag; returns self."""

        def need(ok: bool, field: str, msg: str) -> None:
            if not ok:
                raise ConfigError(f"--distributed.{field.replace('_', '-')}: {msg}")

        if not self.auto and self.enabled:
            need(
                bool(self.coordinator),
                "coordinator",
                "needed with --distributed.num-processes/--distributed.process-id (HOST:PORT "
                "of process 0), or pass --distributed.auto on a cluster jax detects",
            )
            need(
                self.num_processes is not None,
                "num_processes",
                "needed with --distributed.coordinator (unless --distributed.auto)",
            )
            need(
                self.process_id is not None,
                "process_id",
                "needed with --distributed.coordinator (unless --distributed.auto)",
            )
        if self.coordinator:
            host, _, port = self.coordinator.rpartition(":")
            need(
                bool(host) and port.isdigit() and 0 < int(port) < 65536,
                "coordinator",
                f"expected HOST:PORT, got {self.coordinator!r}",
            )
        if self.num_processes is not None:
            need(
                self.num_processes >= 1,
                "num_processes",
                f"must be at least 1, got {self.num_processes}",
            )
        if self.process_id is not None:
            need(
                self.process_id >= 0
                and (self.num_processes is None or self.process_id < self.num_processes),
                "process_id",
                f"must be in 0 .. num_processes - 1, got {self.process_id}",
            )
        need(self.timeout_s > 0, "timeout_s", f"must be positive, got {self.timeout_s}")
        return self


def initialize(config: DistributedConfig) -> None:
    """Join the run `config` describes (nothing for a single process). Call it before any jax
    computation or device query: jax fixes the device list on first use."""
    if not config.enabled or jax.distributed.is_initialized():
        return
    config.validate()
    jax.config.update("jax_cpu_collectives_implementation", config.cpu_collectives)
    where = config.coordinator or "the coordinator of the detected cluster"
    try:
        jax.distributed.initialize(
            coordinator_address=config.coordinator or None,
            num_processes=config.num_processes,
            process_id=config.process_id,
            initialization_timeout=config.timeout_s,
        )
    except (RuntimeError, ValueError, TypeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"--distributed: cannot join the run at {where}: {first[:300]}") from None


def is_primary() -> bool:
    """True on the process that writes host-side files (process 0)."""
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Wait until every process reaches the barrier `name` (nothing with one process)."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices(name)
