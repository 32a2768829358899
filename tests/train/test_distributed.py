"""DDP through torchrun: two gloo processes on 127.0.0.1 behave like one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from spikezoo.train import load_recipe, read_training_checkpoint, train

from .conftest import TINY

ROOT = Path(__file__).resolve().parents[2]

#: A LayerNorm-only timm ViT: without BatchNorm, two ranks of 32 equal one process of 64
#: (BatchNorm statistics are per rank unless model.sync_bn=true, which needs GPUs).
VIT = [
    "model.name=vit_tiny_patch16_224",
    "model.kwargs={img_size: 8, patch_size: 4, embed_dim: 32, depth: 1, num_heads: 2}",
    "data.img_size=8",
    "data.subset=256",
    "run.epochs=2",
    "optim.opt=sgd",  # linear in the gradient: Adam would magnify last-bit differences
    "optim.lr=0.05",
    "run.progress=false",
    "run.plot=false",
    "run.tensorboard=false",
]


def _torchrun(output: Path, *overrides: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", SPIKEZOO_TEST_RUN=str(output))
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:0",
        "-m",
        "spikezoo.train",
        "digits",
        *overrides,
        f"run.output={output}",
    ]
    return subprocess.Popen(
        command, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )


def _finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    return out


@pytest.mark.slow  # torchrun: three processes
def test_two_ranks_equal_one_process_with_the_global_batch(tmp_path):
    ddp = _torchrun(tmp_path / "ddp", *VIT, "data.batch_size=32")
    single = train(
        load_recipe("digits", [*VIT, "data.batch_size=64", f"run.output={tmp_path / 'one'}"])
    )
    out = _finish(ddp)
    assert ddp.returncode == 0, out
    checkpoint = read_training_checkpoint(tmp_path / "ddp" / "last.pth")
    assert checkpoint["world_size"] == 2
    first, second = checkpoint["rank_fingerprints"]
    assert first == second  # both ranks hold identical weights
    reference = read_training_checkpoint(tmp_path / "one" / "last.pth")
    for name, value in reference["state_dict"].items():
        torch.testing.assert_close(checkpoint["state_dict"][name], value, rtol=1e-4, atol=1e-5)
    metrics = checkpoint["metrics"]
    assert metrics["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
    assert metrics["eval_loss"] == pytest.approx(single["eval_loss"], rel=1e-4)
    assert abs(metrics["eval_top1"] - single["eval_top1"]) <= 100 / 256 + 1e-9  # one sample


def _rank_pid(marker: str, rank: int) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"SPIKEZOO_TEST_RUN={marker}".encode() in environ and f"RANK={rank}".encode() in environ:
            return int(entry.name)
    return None


@pytest.mark.slow  # torchrun: three processes, a minute
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="finds the ranks through /proc")
def test_killing_a_rank_keeps_the_last_good_checkpoint(tmp_path):
    process = _torchrun(tmp_path, *TINY, "data.batch_size=16", "run.epochs=50")
    last = tmp_path / "last.pth"
    try:
        deadline = time.monotonic() + 240
        while not last.exists() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert last.exists(), _finish(process)
        victim = _rank_pid(str(tmp_path), rank=1)
        assert victim is not None
        os.kill(victim, signal.SIGKILL)
        out = _finish(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0, out
    checkpoint = read_training_checkpoint(last)  # whole: either epoch's file, never a torn one
    assert 1 <= checkpoint["epoch"] < 50
    first, second = checkpoint["rank_fingerprints"]
    assert first == second
