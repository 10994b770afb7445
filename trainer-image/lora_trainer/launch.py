"""Whole-node multi-GPU: one trainer process per GPU, joined through accelerate.

The pod runs a single ``lora-train`` (docs/CONTRACTS.md). When it sees more than one
GPU it becomes a small launcher: it starts one worker per GPU running the same command
line, with the environment torch.distributed and accelerate read (``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``), and waits. Each
worker's ``Accelerator`` joins the group (NCCL on GPUs, gloo on CPU), wraps the denoiser
in DDP and takes every ``world``-th micro-batch; only rank 0 writes outputs. This is data
parallelism: the workers share each data pass, so an auto step count is divided by the
number of workers and the same epochs finish about that many times sooner (global batch =
batch x accumulation x workers; the learning rates are not scaled, see training.batchSize).

The launcher exits with the first failing worker's code, so the operator still tells a
NaN loss, an input error and a transient error apart (``torchrun`` and ``accelerate
launch`` would turn them all into 1). The other workers are stopped then: they would
wait forever in a collective for the one that died.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

from lora_operator.api import ExitCode

from .errors import ConfigError

log = logging.getLogger(__name__)

PROCESSES_ENV = "LORA_PROCESSES"
"""Overrides the number of worker processes (default: the GPUs the pod sees)."""
DISTRIBUTED_ENV = ("LOCAL_RANK", "WORLD_SIZE")
"""Set by this launcher, torchrun or accelerate launch: the process is already a worker."""
GRACE_SECONDS = 15.0
"""How long the other workers get to finish on their own after one failed."""
POLL_SECONDS = 0.2


def is_worker(env: Mapping[str, str]) -> bool:
    """True inside a launched worker (ours, torchrun's or accelerate launch's)."""
    return any(name in env for name in DISTRIBUTED_ENV)


def wanted_processes(requested: int | None, env: Mapping[str, str]) -> int:
    """Worker processes to start: `requested`, else ``LORA_PROCESSES``, else one per visible GPU."""
    if requested is not None:
        return max(1, requested)
    if env.get(PROCESSES_ENV):
        try:
            return max(1, int(env[PROCESSES_ENV]))
        except ValueError as err:
            raise ConfigError(f"{PROCESSES_ENV}: not a number: {env[PROCESSES_ENV]!r}") from err
    import torch

    return max(1, torch.cuda.device_count())


def worker_env(base: Mapping[str, str], rank: int, world: int, port: int, cuda: bool) -> dict[str, str]:
    """The environment of worker `rank` (single node: rank and local rank agree)."""
    env = dict(base)
    env.update({"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world),
                "LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    if not cuda:
        env["ACCELERATE_USE_CPU"] = "true"  # gloo on CPU; accelerate otherwise stays single-process
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // world)))
    return env


def free_port() -> int:
    """A TCP port free on this host now (for the rendezvous of rank 0)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch(argv: Sequence[str], processes: int, env: Mapping[str, str]) -> int:
    """Run ``python -m lora_trainer.cli *argv`` in `processes` workers; returns the exit code.

    Args:
        argv: The command line of one worker (the launcher's own arguments).
        processes: Workers to start (one per GPU).
        env: Their base environment.

    Returns:
        0 when every worker succeeded, else the first failing worker's exit code
        (`ExitCode.UNEXPECTED` for one killed by a signal).
    """
    import torch

    cuda = torch.cuda.is_available()
    port = free_port()
    log.info("starting %d training processes (%s)", processes, "one per GPU" if cuda else "CPU, gloo")
    command = [sys.executable, "-m", "lora_trainer.cli", *argv]
    workers = [subprocess.Popen(command, env=worker_env(env, rank, processes, port, cuda))
               for rank in range(processes)]
    # The pod's SIGTERM goes to this process alone: pass it on. Ctrl-C reaches the workers from the
    # terminal already; the launcher keeps waiting for their exit codes.
    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, _forward(workers)),
                signal.SIGINT: signal.signal(signal.SIGINT, signal.SIG_IGN)}
    try:
        return supervise(workers)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _stop(workers)


def _forward(workers: list[subprocess.Popen]):
    def handler(signum, _frame):
        for worker in workers:
            if worker.poll() is None:
                worker.send_signal(signum)

    return handler


def supervise(workers: list[subprocess.Popen], grace: float = GRACE_SECONDS) -> int:
    """Wait for the workers; once one fails, give the others `grace` seconds, then stop them.

    Returns:
        0 when all succeeded, else the first failure's exit code (`ExitCode.UNEXPECTED`
        for a worker killed by a signal).
    """
    failed: int | None = None
    deadline = float("inf")
    while any(w.poll() is None for w in workers):
        for rank, worker in enumerate(workers):
            code = worker.poll()
            if code and failed is None:
                failed, deadline = code, time.monotonic() + grace
                log.error("training process %d exited with %d; stopping the others", rank, code)
        if time.monotonic() > deadline:
            break
        time.sleep(POLL_SECONDS)
    _stop(workers)
    if failed is None:
        failed = next((w.returncode for w in workers if w.returncode), 0)
    return int(ExitCode.UNEXPECTED) if failed < 0 else failed


def _stop(workers: list[subprocess.Popen]) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.terminate()
    for worker in workers:
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
