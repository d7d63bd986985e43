"""Several training processes on one CPU machine, with torch.distributed's gloo backend.

nerfstudio 1.1.5's launcher (`ns-train --machine.num-devices N`) asserts CUDA in every worker, so on a
CPU multi-process training starts here instead (`train_on_cpu`, from Python; the tests use it). Each process builds its own data manager (the same
images, its own random rays: the seed is `machine.seed + rank`), and the plugin's trainer wraps the model
in DistributedDataParallel, so every step's gradient is the mean of the processes' gradients and the
parameters stay identical in all of them. Only the first process writes checkpoints, events and the viewer.
"""

from __future__ import annotations

import socket
from typing import Any, Callable, Sequence

import torch.distributed as dist
import torch.multiprocessing as mp
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import comms


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_on_cpu(worker: Callable[..., Any], num_processes: int, args: Sequence[Any] = ()) -> None:
    """Run `worker(rank, num_processes, *args)` in `num_processes` new processes joined in a gloo process
    group; an exception in any of them is raised here. `worker` must be importable (a module-level function)."""
    mp.spawn(_entry, args=(num_processes, free_port(), worker, tuple(args)), nprocs=num_processes, join=True)


def _entry(rank: int, world_size: int, port: int, worker: Callable[..., Any], args: Sequence[Any]) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    # nerfstudio's helpers (comms.synchronize, the writer's main-process checks) read this group
    comms.LOCAL_PROCESS_GROUP = dist.new_group(list(range(world_size)))
    try:
        worker(rank, world_size, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def train_on_cpu(config: TrainerConfig, num_processes: int) -> None:
    """Train `config` in `num_processes` CPU processes (its timestamp is fixed and config.yml written first,
    so that every process writes into the same run directory)."""
    config.machine.device_type = "cpu"
    config.machine.num_devices = num_processes
    config.set_timestamp()
    config.save_config()
    launch_on_cpu(_train_worker, num_processes, (config,))


def _train_worker(rank: int, world_size: int, config: TrainerConfig) -> None:
    from neurecon_ns.engine.trainer import set_random_seed

    set_random_seed(config.machine.seed + rank)
    trainer = config.setup(local_rank=rank, world_size=world_size)
    trainer.setup()
    trainer.train()
