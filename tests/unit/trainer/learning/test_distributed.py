"""DistributedDataParallel: the gradient of every global batch equals one process's (exact
math, checked on gradients because Adam would hide a constant scale error); then torchrun and
Ray Train, 2 CPU processes (gloo) against one process on a tiny model with dropout off, for
`train` and a class-balanced, herding-replay `adapt`: weights within 1e-4 (only float summation
order differs), and rank 0 alone writes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from tests.models import tiny_base
from trainer.learning.distributed import shard
from trainer.learning.fit import shard_loss

ROOT = Path(__file__).resolve().parents[4]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
COMMON = ["--epochs", "2", "--max-train", "49", "--batch-size", "16", "--max-length", "32",
          "--lora-dropout", "0", "--memory", "12", "--max-eval", "32", "--min-steps", "0",
          "--patience", "0", "--allow-weak"]  # a tiny random model: weak, on purpose fast


BATCHES = [list(range(8)), [8, 9, 10], [11]]  # split 4/4, 2/1, and 1/0: an empty slice


def ddp_gradients(rank, size, store, out, x, y, weights):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
    torch.manual_seed(0)
    model = torch.nn.Linear(x.shape[1], 3)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    grads = []
    for idx in BATCHES:
        mine = shard(idx, rank, size)
        rows = mine or idx[:1]
        shard_loss(ddp(x[rows]), y[rows], y[idx], weights, size, empty=not mine).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
        model.zero_grad()
    torch.save(grads, out / f"rank{rank}.pt")
    dist.barrier()  # neither rank tears gloo down while the other still talks to it (SIGABRT)
    dist.destroy_process_group()
    # gloo's threads can still abort the interpreter's finalization (SIGABRT, "terminate called
    # without an active exception": 1 run in ~10 here, a known PyTorch teardown race): the
    # results are on disk, so leave without finalizing.
    os._exit(0)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 1.0, 2.5])])
def test_ddp_gradients_equal_one_process_gradients(tmp_path, weights):
    gen = torch.Generator().manual_seed(1)
    x, y = torch.randn(12, 4, generator=gen), torch.randint(0, 3, (12,), generator=gen)
    torch.multiprocessing.start_processes(  # spawn: a fork would inherit torch's thread pool
        ddp_gradients, args=(2, tmp_path / "store", tmp_path, x, y, weights), nprocs=2,
        start_method="spawn")
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    for step, idx in enumerate(BATCHES):
        mean = torch.nn.CrossEntropyLoss(weight=weights)(model(x[idx]), y[idx])
        assert torch.allclose(shard_loss(model(x[idx]), y[idx], y[idx], weights, 1), mean)
        expected = torch.autograd.grad(mean, list(model.parameters()))
        for rank in (0, 1):
            got = torch.load(tmp_path / f"rank{rank}.pt")[step]
            for g, e in zip(got, expected):
                assert torch.allclose(g, e, atol=1e-6), (step, rank)


def trainer(args: list[str], ranks: int = 1) -> dict:
    launcher = ([str(BIN / "torchrun"), "--standalone", f"--nproc_per_node={ranks}"]
                if ranks > 1 else [sys.executable])
    proc = subprocess.run([*launcher, "-m", "trainer", *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count('"world_size"') == 1  # only rank 0 prints the result
    return json.loads(proc.stdout)


def max_weight_diff(a: Path, b: Path) -> float:
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    return max(float((wa[k].float() - wb[k].float()).abs().max()) for k in wa)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    base = tiny_base(root / "base", dropout=0.0)
    train = ["train", "--data", "nyt", "--base-model", str(base), *COMMON]
    one = trainer([*train, "--out", str(root / "v1-one")])
    two = trainer([*train, "--out", str(root / "v1-two")], ranks=2)
    return root, one, two


def test_torchrun_train_matches_one_process_and_writes_once(runs):
    root, one, two = runs
    assert (one["world_size"], two["world_size"]) == (1, 2)
    # 49 = 3 batches of 16 + 1: in the last one rank 1 has no example and backpropagates zero
    assert one["examples_processed"] == two["examples_processed"] == 98
    assert max_weight_diff(root / "v1-one", root / "v1-two") < 1e-4
    assert abs(one["history"][-1]["train_loss"] - two["history"][-1]["train_loss"]) < 1e-4
    assert sorted(p.name for p in root.iterdir()) == ["base", "v1-one", "v1-two"]


def test_torchrun_balanced_adapt_matches_one_process(runs):
    root, _, _ = runs
    adapt = ["adapt", "--from", str(root / "v1-one"), "--data", "movie", "--balance",
             "--balanced-sampler", "--selection", "herding", *COMMON]
    one = trainer([*adapt, "--out", str(root / "v2-one")])
    two = trainer([*adapt, "--out", str(root / "v2-two")], ranks=2)
    assert one["class_weights"] == two["class_weights"] and one["class_weights"] is not None
    assert one["replay_buffer"] == two["replay_buffer"]
    assert max_weight_diff(root / "v2-one", root / "v2-two") < 1e-4
    assert one["accuracy_matrix"] == two["accuracy_matrix"]


def test_ray_train_engine_runs_the_same_code_path(runs):
    """`--engine ray`: a local Ray cluster, 2 TorchTrainer workers over gloo, rank 0 writes."""
    root, one, _ = runs
    out = trainer(["train", "--data", "nyt", "--base-model", str(root / "base"), *COMMON,
                   "--out", str(root / "v1-ray"), "--engine", "ray", "--num-workers", "2"])
    assert out["world_size"] == 2 and out["examples_processed"] == one["examples_processed"]
    assert max_weight_diff(root / "v1-one", root / "v1-ray") < 1e-4
    assert abs(one["history"][-1]["train_loss"] - out["history"][-1]["train_loss"]) < 1e-4
