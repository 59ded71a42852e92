"""Data parallelism over torch.distributed, one code path for both launchers: torchrun, and
Ray Train (`--engine ray`).

Every rank builds the same seeded epoch order and takes its slice of each global batch, so the
class weights (counted over the whole training set) and a balanced sampler stay exactly those
of a single process; DistributedDataParallel averages the gradients; rank 0 alone evaluates,
herds and writes artifacts. gloo on CPU, NCCL on GPU.
"""

import argparse
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from trainer.common.errors import EXIT_OK, EXIT_WEAK, SettingsError


def init_from_env() -> bool:
    """Join the process group a launcher described in the environment (WORLD_SIZE > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return True


def device() -> torch.device:
    """This rank's GPU (LOCAL_RANK, or the one GPU a launcher left visible), else the CPU."""
    if not torch.cuda.is_available():
        return torch.device("cpu")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    return torch.device(f"cuda:{local if local < torch.cuda.device_count() else 0}")


def world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main() -> bool:
    return world()[0] == 0


def shard(batch: list[int], rank: int, size: int) -> list[int]:
    """This rank's slice of a global batch (strided, so sizes differ by at most one)."""
    return batch[rank::size]


def all_sum(value: float) -> float:
    if world()[1] == 1:
        return value
    tensor = torch.tensor([value], dtype=torch.float64)
    dist.all_reduce(tensor)
    return float(tensor[0])


def close() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--engine", choices=("local", "ray"), default="local",
                        help="local: this process, or every rank torchrun starts; ray: Ray Train "
                             "workers (optional extra: pip install 'driftserve[ray]')")
    parser.add_argument("--num-workers", type=int, default=2,
                        help="Ray Train workers with --engine ray (default: 2)")


def absolute_paths(args: argparse.Namespace) -> argparse.Namespace:
    """Ray workers run in their own directories: paths must not depend on this one."""
    out = argparse.Namespace(**vars(args))
    for name in ("out", "source_run", "base_model", "data"):
        value = getattr(out, name, None)
        if value and (name == "out" or Path(value).exists()):
            setattr(out, name, str(Path(value).resolve()))
    return out


def run_on_ray(args: argparse.Namespace) -> tuple[Any, int]:
    """The verb's own function on `--num-workers` Ray Train workers: TorchTrainer forms the
    process group (gloo on CPU, NCCL on GPU), so fit() runs the same DDP path as torchrun."""
    try:
        import ray
        from ray.train import RunConfig, ScalingConfig
        from ray.train.torch import TorchTrainer
    except ImportError as e:
        raise SettingsError("--engine ray needs Ray Train: pip install 'driftserve[ray]'") from e
    if args.num_workers < 1:
        raise SettingsError(f"--num-workers must be >= 1, got {args.num_workers}")
    shipped = absolute_paths(args)

    def worker(config: dict[str, Any]) -> None:
        config["args"].func(config["args"])  # rank 0 writes the run dir and its report.json

    if os.environ.get("RAY_ADDRESS"):  # an existing cluster: --out must be on shared storage
        ray.init()
    elif not ray.is_initialized():  # a local cluster, one logical CPU more than the workers
        ray.init(num_cpus=max(os.cpu_count() or 1, args.num_workers + 1), include_dashboard=False,
                 log_to_driver=False)
    with tempfile.TemporaryDirectory(prefix="driftserve-ray-") as storage:
        TorchTrainer(
            worker, train_loop_config={"args": shipped},
            scaling_config=ScalingConfig(num_workers=args.num_workers,
                                         use_gpu=torch.cuda.is_available()),
            run_config=RunConfig(storage_path=storage, name="driftserve"),
        ).fit()
    report = json.loads((Path(shipped.out) / "report.json").read_text())
    weak = report.get("quality", {}).get("weak") and not getattr(args, "allow_weak", False)
    return report, EXIT_WEAK if weak else EXIT_OK  # as trainer.model.quality.exit_code
