"""Process-group set-up for ``train.py``: ``mp.spawn`` on one machine or ``torchrun``.

Two ways to start several training processes, both ending in one
``torch.distributed`` process group with the ``env://`` rendezvous:

* ``train.py --world-size N`` spawns N processes on this machine with
  ``torch.multiprocessing.spawn``; process ``i`` is rank ``i`` and local rank
  ``i``, and the master address/port are ``localhost``/``--master-port``.
* ``torchrun ... train.py`` starts the processes itself (on one or several
  machines) and hands each of them ``RANK``, ``LOCAL_RANK``, ``WORLD_SIZE``,
  ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in the
  environment; :func:`launch_from_environ` reads them and ``train.py`` then
  runs one process per launched process, never spawning.

:class:`DistEnv` carries the result (rank, local rank for the device, world
size, processes on this machine for the CPU thread share, and the launcher).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, List, Mapping, Optional

import torch
import torch.distributed as dist

#: Environment variables that torchrun (torch.distributed.run) sets in every worker.
TORCHRUN_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits among the training processes.

    Attributes:
      rank: global rank (0 .. world_size-1).
      local_rank: rank on this machine; picks the GPU ``cuda:<local_rank>``.
      world_size: number of processes over all machines.
      local_world_size: processes on this machine (shares out the CPU cores).
      launcher: ``"single"``, ``"spawn"`` (``--world-size N``) or ``"torchrun"``.
    """

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    local_world_size: int = 1
    launcher: str = "single"

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1


def launch_from_environ(environ: Optional[Mapping[str, str]] = None) -> Optional[DistEnv]:
    """The :class:`DistEnv` torchrun describes in ``environ``; None when not under torchrun.

    Raises ``ValueError`` (naming the variable) when the variables are only
    partly set or are not integers in range.
    """
    env = os.environ if environ is None else environ
    present = [k for k in TORCHRUN_VARS if k in env]
    if not present:
        return None
    if len(present) != len(TORCHRUN_VARS):
        missing = [k for k in TORCHRUN_VARS if k not in env]
        raise ValueError(
            f"{', '.join(present)} set in the environment but not {', '.join(missing)}: "
            "start train.py with torchrun (which sets all of them) or unset them"
        )
    values = {}
    for k in TORCHRUN_VARS + ("LOCAL_WORLD_SIZE",):
        raw = env.get(k)
        if raw is None:
            continue
        try:
            values[k] = int(raw)
        except ValueError as e:
            raise ValueError(f"environment variable {k}={raw!r} is not an integer") from e
    world, rank, local = values["WORLD_SIZE"], values["RANK"], values["LOCAL_RANK"]
    local_world = values.get("LOCAL_WORLD_SIZE", world)
    if world < 1 or not 0 <= rank < world or not 0 <= local < local_world:
        raise ValueError(
            f"inconsistent torchrun environment: RANK={rank} LOCAL_RANK={local} "
            f"WORLD_SIZE={world} LOCAL_WORLD_SIZE={local_world}"
        )
    return DistEnv(rank, local, world, local_world, "torchrun")


def spawn_env(rank: int, world_size: int) -> DistEnv:
    """The :class:`DistEnv` of process ``rank`` of ``mp.spawn`` (or of a single process)."""
    launcher = "spawn" if world_size > 1 else "single"
    return DistEnv(rank, rank, world_size, world_size, launcher)


def setup_dist(env: DistEnv, backend: str, master_port: int = 12354) -> None:
    """Initialise the default process group with the ``env://`` rendezvous.

    Under ``mp.spawn`` the rendezvous variables are set here (``localhost``,
    ``master_port``); under torchrun they are torchrun's and are left alone.
    """
    if env.launcher == "spawn":
        os.environ.setdefault("MASTER_ADDR", "localhost")
        os.environ["MASTER_PORT"] = str(master_port)
        os.environ["WORLD_SIZE"] = str(env.world_size)
        os.environ["RANK"] = str(env.rank)
        os.environ["LOCAL_RANK"] = str(env.local_rank)
    dist.init_process_group(backend, init_method="env://", rank=env.rank, world_size=env.world_size)


def cleanup_dist() -> None:
    """Wait for every rank, then destroy the process group (no-op without one)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_ranks_true(flag: bool, device: torch.device) -> bool:
    """``flag`` and-ed over every rank (a collective; just ``flag`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return bool(t.item() > 0.5)


def gather_objects(obj: Any) -> List[Any]:
    """``[obj of rank 0, obj of rank 1, ...]`` (a collective; ``[obj]`` without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: List[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out
