"""Which rank of a distributed job this process is, and the run all ranks share.

Each rank's session root carries ``rank``, ``world_size``, ``local_rank`` and ``run_id``; every
batch's ``resource`` has them too, so the ranks of one run can be told apart and grouped in a
shared spool.

* rank / world size / local rank: ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` (torchrun, accelerate),
  else Open MPI's ``OMPI_COMM_WORLD_*``, else Slurm's ``SLURM_PROCID``/``SLURM_NTASKS``/
  ``SLURM_LOCALID``, else an initialised ``torch.distributed``; else rank 0 of 1.
* local rank: null where the launcher does not say (a job of several ranks without ``LOCAL_RANK``).
* run id: ``TORCHELASTIC_RUN_ID`` (torchrun sets it for every rank), else ``CIRRON_RUN_ID``;
  else a single process makes one up, and a rank of a larger job has none (nothing can share a
  generated id with the other ranks without a collective call, which cirron never makes).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

ENV_RUN_ID = "CIRRON_RUN_ID"
ENV_TORCHELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"

#: (rank, world size, local rank) variables of each launcher, tried in this order.
_LAUNCHERS = (
    ("RANK", "WORLD_SIZE", "LOCAL_RANK"),
    ("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
    ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"),
)


@dataclass(frozen=True)
class RankInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int | None = 0
    run_id: str | None = None


def _int(name: str) -> int | None:
    value = os.environ.get(name, "").strip()
    return int(value) if value.isdigit() else None


def detect_rank() -> RankInfo:
    """This process's place in its job, from the launcher's environment or torch.distributed."""
    rank = world = local = None
    for rank_var, world_var, local_var in _LAUNCHERS:
        rank = _int(rank_var)
        if rank is not None:
            world, local = _int(world_var), _int(local_var)
            break
    if rank is None:
        dist = sys.modules.get("torch.distributed")
        try:
            if dist is not None and dist.is_available() and dist.is_initialized():
                rank, world = int(dist.get_rank()), int(dist.get_world_size())
        except Exception:  # noqa: BLE001 - a broken torch install is not our caller's problem
            pass
    rank = rank or 0
    world = world if world and world > rank else max(1, rank + 1)
    if local is None and world == 1:
        local = 0
    elastic = os.environ.get(ENV_TORCHELASTIC_RUN_ID)
    if elastic == "none":  # torchrun's placeholder when no --rdzv-id was given: the same for every run
        elastic = None
    run_id = elastic or os.environ.get(ENV_RUN_ID) or None
    if run_id is None and world == 1:
        import uuid  # only here: importing uuid (and platform) is not part of import cirron

        run_id = uuid.uuid4().hex
    return RankInfo(rank, world, local, run_id)
