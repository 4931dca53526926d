"""Several training processes in one pod: torchrun launch, ranks, and the two collectives the
pipeline needs.

The trainer launches itself: `python -m kubetune_trainer run` with `KUBETUNE_NPROC_PER_NODE=N`
(N > 1; the operator sets it to `resources.gpus`) runs torchrun's elastic agent in-process
(`torch.distributed.run`, `--standalone`: rendezvous on loopback, no extra Service) with N
workers, each `python -m kubetune_trainer run` again with the same arguments. Why not make
`torchrun` the container's command: the launcher must stay the one process that writes the
termination message and chooses the exit code (3 = permanent failure, which torchrun would turn
into 1), and must write a result when a worker dies without one; the pod's command and the local
pod runner stay as they are, and `gpus: 0`/`1` runs exactly as before.

In the workers (`LOCAL_RANK` set by torchrun): rank 0 runs the whole pipeline; the data stage is
its alone (licence, download, data policy, tokenizer) and it hands the prepared data to the other
ranks with one broadcast (`share_from_main`), on a gloo group whose timeout allows a long model
download. All ranks train together (transformers' Trainer under DDP: each rank holds the model on
its own device, `device_map={"": local_rank}`); the other ranks then exit, and rank 0 alone
evaluates, exports and writes `result.json`. Nothing here runs FSDP (docs/distributed.md).
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kubetune.api.trainer_contract import ENV_NPROC_PER_NODE

MAX_PROCESSES = 16
"""As many as `resources.gpus` allows."""

COLLECTIVE_TIMEOUT = datetime.timedelta(minutes=30)
"""Training collectives (gradient all-reduce, barriers): a rank stuck this long is a hang."""

DATA_STAGE_TIMEOUT = datetime.timedelta(hours=12)
"""How long the other ranks wait for rank 0's data stage (it may download a 70B model)."""

_data_group: Any = None


class ProcessCountError(ValueError):
    """`KUBETUNE_NPROC_PER_NODE` is not a usable process count."""


def requested_processes(environ: Mapping[str, str] | None = None) -> int:
    """Processes asked for with `KUBETUNE_NPROC_PER_NODE` (1 when unset or empty)."""
    env = os.environ if environ is None else environ
    raw = env.get(ENV_NPROC_PER_NODE, "").strip()
    if not raw:
        return 1
    try:
        count = int(raw)
    except ValueError:
        count = 0
    if not 1 <= count <= MAX_PROCESSES:
        raise ProcessCountError(
            f"{ENV_NPROC_PER_NODE}={raw!r}: give a whole number of training processes from 1 to "
            f"{MAX_PROCESSES} (the operator sets it to resources.gpus)"
        )
    return count


def in_worker(environ: Mapping[str, str] | None = None) -> bool:
    """True in a process torchrun started (it sets LOCAL_RANK and WORLD_SIZE)."""
    env = os.environ if environ is None else environ
    return "LOCAL_RANK" in env and int(env.get("WORLD_SIZE", "1")) > 1


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if in_worker() else 1


def rank() -> int:
    return int(os.environ.get("RANK", "0")) if in_worker() else 0


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0")) if in_worker() else 0


def is_main_process() -> bool:
    """Rank 0, or the only process."""
    return rank() == 0


def device_map_target(device: str) -> str | int:
    """Where this process loads the model: its own GPU under DDP (`local_rank`), else `device`."""
    if device == "cuda" and in_worker():
        return local_rank()
    return device


def init_worker(device: str) -> None:
    """Join the process group torchrun set up the environment for (NCCL on GPUs, gloo on CPU),
    and make the gloo group the data-stage broadcast waits on. transformers' Trainer finds the
    group initialised and uses it."""
    global _data_group
    import torch
    import torch.distributed as dist

    if not in_worker() or dist.is_initialized():
        return
    if device == "cuda":
        torch.cuda.set_device(local_rank())
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo", timeout=COLLECTIVE_TIMEOUT
    )
    _data_group = dist.new_group(backend="gloo", timeout=DATA_STAGE_TIMEOUT)


def share_from_main(value: Any) -> Any:
    """Rank 0's `value` on every rank (pickled over the gloo group); `value` itself alone."""
    if not in_worker():
        return value
    import torch.distributed as dist

    box = [value if is_main_process() else None]
    dist.broadcast_object_list(box, src=0, group=_data_group)
    return box[0]


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not in_worker():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.barrier()


def finish_worker() -> None:
    """Leave the process group cleanly (NCCL warns when a process exits without it)."""
    if not in_worker():
        return
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def gpu_shortage(nproc: int, visible_gpus: int) -> str | None:
    """Why `nproc` processes cannot each have a GPU of the `visible_gpus` (None: they can, or
    none is visible and the processes run on CPU, as a single process then does)."""
    if 0 < visible_gpus < nproc:
        return (
            f"{ENV_NPROC_PER_NODE}={nproc} training processes but {visible_gpus} GPU(s) visible "
            "in the container: resources.gpus must be the GPUs the node gives the pod "
            "(check the device plugin and CUDA_VISIBLE_DEVICES)"
        )
    return None


def visible_gpus() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def launch_workers(nproc: int, trainer_args: Sequence[str]) -> str | None:
    """Run `python -m kubetune_trainer <trainer_args>` as `nproc` torchrun workers on this
    machine and wait for them; None when all ended with exit code 0, else what failed.

    The elastic agent runs in this process: SIGTERM (pod deletion, suspension) reaches it and it
    stops the workers; a worker that fails makes it stop the others (no restarts: the Job's
    backoffLimit retries the pod, which resumes from the last checkpoint)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args
    from torch.distributed.run import run as torchrun

    args = parse_args(  # type: ignore[no-untyped-call]
        [
            "--standalone",
            f"--nproc-per-node={nproc}",
            "--max-restarts=0",
            "--module",
            "kubetune_trainer",
            *trainer_args,
        ]
    )
    print(f"launching {nproc} training processes (torchrun, standalone)", flush=True)
    try:
        torchrun(args)  # type: ignore[no-untyped-call]
    except ChildFailedError as exc:
        failures = ", ".join(
            f"rank {global_rank} exit code {failure.exitcode}"
            for global_rank, failure in sorted(exc.failures.items())
        )
        return f"training process failed ({failures}); the pod log has its traceback"
    except SignalException as exc:
        # The agent has stopped the workers; leave as a signalled process does (no result:
        # the pod is being deleted or suspended, and resumes from the last checkpoint).
        print(f"stopped by signal {int(exc.sigval)}: the training processes were stopped", flush=True)
        raise SystemExit(128 + int(exc.sigval)) from None
    return None


def worker_args(argv: Sequence[str] | None) -> list[str]:
    """The launcher's own arguments, handed on to each worker."""
    return list(sys.argv[1:] if argv is None else argv)


def remove_stale_result(workdir: Path, name: str) -> None:
    """An earlier attempt's result must not pass for this one's."""
    (workdir / name).unlink(missing_ok=True)
