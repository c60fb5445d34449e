"""Trainer: exact resume after an interruption, early stopping, DDP (2 gloo processes) == 1 process."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CodePayload
from torch import nn
from torch.utils.data import Dataset

from motionqc.models.soft_labels import SoftLabelKL
from motionqc.training.callbacks import Callback
from motionqc.training.config import TrainConfig
from motionqc.training.launch import main, toy_task
from motionqc.training.reproducibility import kaiming_init, seed_everything
from motionqc.training.trainer import Trainer


class NoisyVolumes(Dataset):
    """Tiny regression set whose items draw random noise with torch AND numpy (augmentation)."""

    def __init__(self, n: int = 12, size: int = 12) -> None:
        g = torch.Generator().manual_seed(123)
        self.x = torch.randn(n, 1, size, size, size, generator=g)
        self.y = self.x.mean(dim=(1, 2, 3, 4)) * 3 + 2.0  # scores inside (-0.8, 4.8)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        noise = 0.05 * torch.randn(self.x[i].shape) + float(np.random.uniform(-0.01, 0.01))
        return self.x[i] + noise, self.y[i]


def small_net(n_out: int = 50) -> nn.Module:
    # BatchNorm and dropout included: resume must restore buffers and the RNG for equality.
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.BatchNorm3d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool3d(2),
        nn.Flatten(),
        nn.Dropout(0.3),
        nn.Linear(32, n_out),
        nn.LogSoftmax(dim=1),
    )


def make_trainer(
    run_dir: Path, model_seed: int, num_workers: int = 0, callbacks=(), **cfg
) -> Trainer:
    seed_everything(model_seed)
    model = kaiming_init(small_net())
    config = TrainConfig(
        max_epochs=3,
        batch_size=4,
        lr=3e-3,
        plateau_patience=0,
        plateau_threshold=0.5,
        early_stopping_patience=10,
        seed=7,
        num_workers=num_workers,
        progress=False,
        **cfg,
    )
    return Trainer(
        model,
        SoftLabelKL(),
        NoisyVolumes(),
        NoisyVolumes(n=6),
        config=config,
        run_dir=run_dir,
        metrics_fn=lambda out, y: {"mean_out": out.exp().argmax(1).float().mean().item()},
        callbacks=callbacks,
    )


def read_csv(path: Path, drop=("time_s",)) -> list[dict[str, str]]:
    with open(path) as fh:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(fh)]


def assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_resume_after_interruption_is_exact(tmp_path):
    # One DataLoader worker: its seeds (torch and numpy noise in the items) must also replay.
    num_workers = 1
    full = make_trainer(tmp_path / "full", model_seed=0, num_workers=num_workers)
    full.fit()
    assert full.epoch == 3
    # The schedule really acts (patience 0), so its state matters for equality.
    lrs = [row["lr"] for row in full.history]
    assert len(set(lrs)) > 1

    part = make_trainer(tmp_path / "part", model_seed=0, num_workers=num_workers)
    part.fit(until_epoch=1)  # "killed" after the checkpoint of epoch 1
    assert part.epoch == 1 and (tmp_path / "part" / "last.pt").exists()
    del part
    # A new process would rebuild the model with whatever init: the checkpoint must win.
    resumed = make_trainer(tmp_path / "part", model_seed=99, num_workers=num_workers)
    assert resumed.epoch == 1 and resumed.resumed_from == 1
    resumed.fit()

    assert_same_state(full.module.state_dict(), resumed.module.state_dict())
    drop = ("time_s",)
    strip = lambda h: [{k: v for k, v in r.items() if k not in drop} for r in h]  # noqa: E731
    assert strip(full.history) == strip(resumed.history)
    assert read_csv(tmp_path / "full" / "metrics.csv") == read_csv(
        tmp_path / "part" / "metrics.csv"
    )
    assert full.best_metric == resumed.best_metric and full.best_epoch == resumed.best_epoch
    assert (tmp_path / "part" / "resources.json").exists()
    assert (tmp_path / "part" / "resources_resume_1.json").exists()
    # And a finished run resumed again does nothing.
    again = make_trainer(tmp_path / "part", model_seed=5, num_workers=num_workers)
    assert again.finished and again.fit() == again.history


def test_checkpoint_contents_and_csv(tmp_path):
    tr = make_trainer(tmp_path, model_seed=0)
    tr.fit(until_epoch=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    for key in ("model", "optimizer", "scheduler", "rng", "epoch", "best_metric", "bad_epochs"):
        assert key in state
    assert state["epoch"] == 1 and len(state["rng"]) == 1
    rows = read_csv(tmp_path / "metrics.csv", drop=())
    assert list(rows[0]) == [
        "epoch",
        "lr",
        "train_loss",
        "val_loss",
        "val_mean_out",
        "best",
        "time_s",
    ]
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    assert best["epoch"] == 1


def test_early_stopping_and_plateau(tmp_path):
    # lr 0: nothing improves after epoch 1, so training stops after `patience` bad epochs.
    seed_everything(0)
    config = TrainConfig(
        max_epochs=20,
        batch_size=4,
        lr=0.0,
        early_stopping_patience=2,
        monitor="train_loss",
        progress=False,
        plateau_patience=0,
    )
    model = nn.Sequential(nn.Flatten(), nn.Linear(12**3, 50), nn.LogSoftmax(1))
    tr = Trainer(model, SoftLabelKL(), NoisyVolumes(n=8), config=config, run_dir=None)
    tr.fit()
    # Epoch 1 sets the best; the noise makes later losses differ, but lr 0 cannot improve much.
    assert tr.stopped_early and tr.epoch < 20
    assert tr.bad_epochs == 2


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="plateau_factor"):
        TrainConfig(plateau_factor=1.5)
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp8")
    with pytest.raises(ValueError, match="validation data"):
        Trainer(small_net(), SoftLabelKL(), NoisyVolumes(), config=TrainConfig(progress=False))
    with pytest.raises(ValueError, match="CUDA"):
        Trainer(
            small_net(),
            SoftLabelKL(),
            NoisyVolumes(),
            config=TrainConfig(precision="fp16", device="cpu", monitor="train_loss"),
        )


def test_cpu_bf16_autocast_runs(tmp_path):
    seed_everything(0)
    cfg = TrainConfig(
        max_epochs=1,
        batch_size=4,
        precision="bf16",
        channels_last=True,
        device="cpu",
        progress=False,
    )
    tr = Trainer(small_net(), SoftLabelKL(), NoisyVolumes(n=8), NoisyVolumes(n=4), config=cfg)
    assert tr.amp_dtype == torch.bfloat16
    hist = tr.fit()
    assert np.isfinite(hist[0]["train_loss"]) and np.isfinite(hist[0]["val_loss"])
    out, y, _ = tr.predict(NoisyVolumes(n=4))
    assert out.dtype == torch.float32 and out.shape == (4, 50)


def test_kaiming_init_statistics():
    torch.manual_seed(0)
    layer = nn.Conv3d(16, 32, 3)
    kaiming_init(layer)
    fan_in = 16 * 27
    assert layer.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.05)
    assert torch.all(layer.bias == 0)
    with pytest.raises(ValueError, match="fan_in"):
        kaiming_init(layer, mode="avg")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ddp_two_gloo_processes_match_single_process(tmp_path):
    args = ["--epochs", "3", "--batch-size", "8", "--lr", "0.01", "--seed", "3", "--device", "cpu"]
    # Single process, in this interpreter.
    main(["--run-dir", str(tmp_path / "single"), *args])
    # Two processes with gloo through torchrun (the same entry point).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CI": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "motionqc.training.launch",
        "--run-dir",
        str(tmp_path / "ddp"),
        *args,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]

    single = torch.load(tmp_path / "single" / "last.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp" / "last.pt", weights_only=True)
    assert ddp["world_size"] == 2 and single["world_size"] == 1 and ddp["epoch"] == 3
    assert len(ddp["rng"]) == 2
    for k, v in single["model"].items():
        torch.testing.assert_close(ddp["model"][k], v, rtol=1e-5, atol=1e-6)
    # The weights moved: the comparison is not trivially between two initial states.
    init = toy_task(seed=3).model.state_dict()
    assert any(not torch.allclose(init[k], v, atol=1e-3) for k, v in single["model"].items())
    for a, b in zip(single["history"], ddp["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5)
        assert a["val_mae"] == pytest.approx(b["val_mae"], rel=1e-5)


def test_onecycle_schedule_steps_per_batch_and_resumes_exactly(tmp_path):
    full = make_trainer(tmp_path / "full", model_seed=0, schedule="onecycle")
    full.fit()
    lrs = [row["lr"] for row in full.history]
    # Warm-up then annealing: the learning rate rises from lr/25 and ends far below its peak.
    assert lrs[0] < lrs[1] and full.optimizer.param_groups[0]["lr"] < 0.1 * 3e-3
    part = make_trainer(tmp_path / "part", model_seed=0, schedule="onecycle")
    part.fit(until_epoch=2)
    del part
    resumed = make_trainer(tmp_path / "part", model_seed=3, schedule="onecycle")
    resumed.fit()
    assert_same_state(full.module.state_dict(), resumed.module.state_dict())
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="cosine")


def test_resume_never_runs_code_from_a_checkpoint(tmp_path):
    tr = make_trainer(tmp_path, model_seed=0)
    tr.fit(until_epoch=1)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    marker = tmp_path / "ran"
    state["history"].append({"payload": CodePayload(str(marker))})
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match="not loaded"):
        make_trainer(tmp_path, model_seed=0)
    assert not marker.exists()


class Recorder(Callback):
    """Records the hooks it sees; fails at one epoch when asked."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.calls: list[tuple] = []
        self.fail_at = fail_at

    def on_fit_start(self, trainer):
        self.calls.append(("start", trainer.epoch))
        if self.fail_at == 0:
            raise RuntimeError("stop here")

    def on_validation(self, trainer, row, value):
        self.calls.append(("validation", row["epoch"], row["best"], value))

    def on_epoch_end(self, trainer, row):
        self.calls.append(("end", row["epoch"], trainer.last_path.is_file()))
        if row["epoch"] == self.fail_at:
            raise RuntimeError("stop here")

    def on_fit_end(self, trainer, error):
        self.calls.append(("fit_end", type(error).__name__ if error else None))


def test_callbacks_see_every_epoch_after_the_trainers_own(tmp_path):
    rec = Recorder()
    trainer = make_trainer(tmp_path / "run", model_seed=0, callbacks=[rec])
    history = trainer.fit()
    assert [c[0] for c in rec.calls] == ["start"] + ["validation", "end"] * 3 + ["fit_end"]
    # after early stopping's and the checkpoint's hooks: "best" is set, last.pt written
    validations = [c for c in rec.calls if c[0] == "validation"]
    assert [c[2] for c in validations] == [row["best"] for row in history]
    assert [c[3] for c in validations] == [row["val_loss"] for row in history]
    assert all(c[2] for c in rec.calls if c[0] == "end")
    assert rec.calls[-1] == ("fit_end", None)
    assert (tmp_path / "run" / "resources.json").is_file()


def test_a_failing_callback_ends_fit_with_its_error_and_the_record_of_the_run(tmp_path):
    import json

    rec = Recorder(fail_at=2)
    trainer = make_trainer(tmp_path / "run", model_seed=0, callbacks=[rec])
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit()
    assert rec.calls[-1] == ("fit_end", "RuntimeError")
    record = json.loads((tmp_path / "run" / "resources.json").read_text())
    assert "end_epoch" not in record.get("extra", record)
    # the checkpoint of epoch 2 was written before the failure: a new trainer resumes there
    again = make_trainer(tmp_path / "run", model_seed=0)
    assert again.epoch == 2


def test_a_callback_failing_at_the_start_still_closes_the_resource_record(tmp_path):
    rec = Recorder(fail_at=0)
    trainer = make_trainer(tmp_path / "run", model_seed=0, callbacks=[rec])
    with pytest.raises(RuntimeError, match="stop here"):
        trainer.fit()
    assert rec.calls == [("start", 0), ("fit_end", "RuntimeError")]
    assert (tmp_path / "run" / "resources.json").is_file() and trainer.epoch == 0
