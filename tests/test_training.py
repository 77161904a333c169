"""Training: configuration, loss going down, exports and checkpoints, resuming, skipped batches, DDP."""

import copy
import csv
import json
import logging
import os
import subprocess
import sys
import warnings

import ase.io
import numpy as np
import pytest
import torch
import yaml
from ase import Atoms

from conftest import tiny_config
from morered import properties as P
from morered.sampling.models import load_model
from morered.training import train as train_mod
from morered.training.config import load_config, parse_duration, parse_override
from morered.training.task import DiffusionTask


# ------------------------------------------------------------------------------------ helpers
@pytest.fixture
def captured(monkeypatch):
    """Run ``train`` with a task class that remembers its instances and initial weights."""
    tasks = []

    class Captured(DiffusionTask):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.initial_model = copy.deepcopy(self.model)
            tasks.append(self)

    monkeypatch.setattr(train_mod, "DiffusionTask", Captured)
    return tasks


def _metrics(out, version=None):
    """Rows of the metrics log of one run (default: the latest run or resume)."""
    if version is None:
        version = max(int(p.name.split("_")[1]) for p in (out / "logs").glob("version_*"))
    with open(out / "logs" / f"version_{version}" / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def _train_losses(out, version=None):
    return [(int(r["step"]), float(r["train_loss"])) for r in _metrics(out, version) if r.get("train_loss")]


def _summary(out):
    return json.loads((out / "summary.json").read_text())


def _adam_steps(ckpt) -> int:
    return int(ckpt["optimizer_states"][0]["state"][0]["step"])


def _all_finite(state_dict) -> bool:
    return all(torch.isfinite(v).all() for v in state_dict.values() if v.is_floating_point())


# ------------------------------------------------------------------------------------ config
def test_unknown_config_key_raises(tmp_path):
    with pytest.raises(KeyError, match="optim.lrr"):
        load_config(None, {"optim.lrr": 1.0})
    with pytest.raises(KeyError, match="nosuchsection"):
        load_config(None, ["nosuchsection.x=1"])
    path = tmp_path / "cfg.yaml"
    path.write_text("trainer:\n  max_stepz: 3\n")
    with pytest.raises(KeyError, match="trainer.max_stepz"):
        load_config(path)


def test_invalid_values_raise():
    with pytest.raises(ValueError, match="model_type"):
        load_config(None, {"model_type": "gan"})
    with pytest.raises(ValueError, match="low_t_fraction"):
        load_config(None, {"diffusion.low_t_fraction": 1.5})


@pytest.mark.parametrize(
    "text, key, value",
    [
        ("optim.lr=5e-4", "optim.lr", 5e-4),  # YAML 1.1 reads 5e-4 as a string
        ("optim.lr=1.0e-3", "optim.lr", 1e-3),
        ("trainer.devices=2", "trainer.devices", 2),
        ("trainer.tensorboard=true", "trainer.tensorboard", True),
        ("data.source=/tmp/my mols.xyz", "data.source", "/tmp/my mols.xyz"),
        ("data.limit_train=null", "data.limit_train", None),
        (" model_type = ddpm", "model_type", "ddpm"),
        ("model.representation={n_features: 16, n_rbf: 8}", "model.representation", {"n_features": 16, "n_rbf": 8}),
    ],
)
def test_parse_override(text, key, value):
    k, v = parse_override(text)
    assert k == key
    assert v == value and type(v) is type(value)


def test_parse_override_needs_equals():
    with pytest.raises(ValueError, match="key=value"):
        parse_override("optim.lr")


def test_overrides_merge_into_defaults(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("model_type: ddpm\noptim: {lr: 0.01}\n")
    cfg = load_config(path, ["optim.lr=2e-3", "model.representation={n_features: 16, n_interactions: 1}"])
    assert cfg["model_type"] == "ddpm"  # from the file
    assert cfg["optim"]["lr"] == 2e-3  # the override wins over the file
    assert cfg["optim"]["ema_decay"] == 0.999  # untouched default
    rep = cfg["model"]["representation"]
    assert rep["n_features"] == 16 and rep["n_interactions"] == 1
    assert rep["name"] == "painn" and rep["cutoff"] == 5.0  # the rest of the representation stays


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("50m", 3000), ("2h", 7200), ("1.5h", 5400), ("1d", 86400), ("45", 45), (30, 30),
     (2.5, 2.5), ("1:30:00", 5400), ("05:00", 300), ("1:02:03:04", 86400 + 2 * 3600 + 3 * 60 + 4), (None, None)],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_garbage():
    with pytest.raises(ValueError):
        parse_duration("soon")


# ------------------------------------------------------------------------------------ training
def test_loss_falls_on_a_tiny_subset(tmp_path, captured, caplog):
    cfg = tiny_config("jt", **{"data.limit_train": 32, "trainer.max_steps": 60, "optim.lr": 5e-3,
                               "trainer.val_every_steps": 30})
    with warnings.catch_warnings(record=True) as seen, caplog.at_level(logging.INFO):  # as a user runs it
        train_mod.train(cfg, tmp_path)
    # Lightning's notes on checkpoints stay out of the log: last.ckpt is meant to hold the weights
    # after the step (manual optimisation) and the full state (weights_only=False, said explicitly)
    assert not [w for w in seen if "manual optimization" in str(w.message)]
    assert "weights_only" not in caplog.text
    # nor its ckpt_path=None -> "last" notes (train passes last.ckpt itself when resuming), its
    # pytree deprecation, its cloud-logger advert, or a second copy of each note on its own handler
    assert not [w for w in seen if "ckpt_path" in str(w.message) or "LeafSpec" in str(w.message)], \
        [str(w.message)[:80] for w in seen]
    assert "litlogger" not in caplog.text
    assert "GPU available" in caplog.text  # the informative notes still reach the root logger
    assert not [h for h in logging.getLogger("lightning").handlers if type(h) is logging.StreamHandler]
    task = captured[0]
    losses = _train_losses(tmp_path)
    assert [s for s, _ in losses] == list(range(60))
    first, last = np.mean([v for _, v in losses[:10]]), np.mean([v for _, v in losses[-10:]])
    assert last < 0.85 * first, (first, last)
    # the same molecules, t and noise before and after: the task loss fell
    train_set, _, _ = train_mod.load_training_data(cfg)
    batch = train_set.batch(range(len(train_set)))

    def fixed_loss(model):
        with torch.no_grad():
            return np.mean([float(task.losses(model, batch, torch.Generator().manual_seed(s))["loss"]) for s in range(8)])

    before, after = fixed_loss(task.initial_model), fixed_loss(task.model)
    assert after < 0.8 * before, (before, after)


@pytest.mark.parametrize("model_type", ["jt", "ddpm", "time"])
def test_train_export_and_checkpoint_round_trip(tmp_path, captured, test_molecules, model_type):
    cfg = tiny_config(model_type, **{"trainer.max_steps": 4, "trainer.val_every_steps": 4})
    best = train_mod.train(cfg, tmp_path)
    task = captured[0]
    assert best == tmp_path / "best.pt"
    summary = _summary(tmp_path)
    assert summary["global_step"] == 4 and summary["skipped_batches"] == 0
    assert summary["best_val_loss"] is not None and np.isfinite(summary["best_val_loss"])
    assert yaml.safe_load((tmp_path / "config.yaml").read_text()) == cfg

    # plain data only: every file loads with weights_only=True and describes the model fully
    ema_state = task.ema.state_dict()
    for name in ("best.pt", "model.pt", "checkpoints/last.ckpt"):
        ckpt = torch.load(tmp_path / name, map_location="cpu", weights_only=True)
        export = ckpt["morered"] if name.endswith(".ckpt") else ckpt
        assert export["format"] == "morered-model/1"
        assert export["model_type"] == model_type
        assert export["config"] == cfg
        assert export["model_args"] == task.model_args
        assert export["model_args"]["noise_head"] == (model_type != "time")
        assert export["model_args"]["time_head"] == (model_type != "ddpm")
        assert export["schedule"] == {"name": "polynomial", "T": 1000}
        assert export["dataset_info"]["elements"] and export["dataset_info"]["max_atoms"] > 0
        # the exported weights are the EMA weights (after 4 steps they differ from the raw ones)
        for k, v in export["state_dict"].items():
            assert torch.equal(v, ema_state[k]), (name, k)
        if name.endswith(".ckpt"):
            assert ckpt["global_step"] == 4 and ckpt["hyper_parameters"]["config"] == cfg
    raw = task.model.state_dict()
    assert any(not torch.equal(raw[k], ema_state[k]) for k in raw)

    batch = test_molecules.batch(range(4))
    t_norm = torch.tensor([0.05, 0.2, 0.5, 0.9])
    task.ema.eval()
    with torch.no_grad():
        ref = {"own": task.ema(batch) if model_type != "ddpm" else None, "given": task.ema(batch, t_norm)}
        for name in ("best.pt", "model.pt", "checkpoints/last.ckpt"):
            lm = load_model(tmp_path / name)
            assert lm.model_type == model_type
            assert lm.max_atoms == summary["dataset"]["max_atoms"]
            assert lm.elements == set(summary["dataset"]["elements"])
            got = lm.model(batch, t_norm)
            for key in ref["given"]:
                torch.testing.assert_close(got[key], ref["given"][key], rtol=0, atol=0)
            if ref["own"] is not None:
                got = lm.model(batch)
                for key in ref["own"]:
                    torch.testing.assert_close(got[key], ref["own"][key], rtol=0, atol=0)
    keys = set(ref["given"])
    assert (P.eps_pred in keys) == (model_type != "time")
    assert (P.t_pred in keys) == (model_type != "ddpm")


def test_resume_continues_the_step_count(tmp_path):
    cfg = tiny_config("jt", **{"trainer.max_steps": 6})
    train_mod.train(cfg, tmp_path)
    assert _summary(tmp_path)["global_step"] == 6
    first = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 6 and _adam_steps(first) == 6

    wall_first = _summary(tmp_path)["wall_seconds_total"]
    cfg = tiny_config("jt", **{"trainer.max_steps": 10})
    train_mod.train(cfg, tmp_path)
    assert _summary(tmp_path)["global_step"] == 10
    assert _summary(tmp_path)["runs"] == 2 and _summary(tmp_path)["wall_seconds_total"] > wall_first
    steps = [s for s, _ in _train_losses(tmp_path)]
    assert steps == [6, 7, 8, 9]  # the second run started at step 6, not 0
    # the first run's log is kept beside the resumed run's
    assert [s for s, _ in _train_losses(tmp_path, version=0)] == [0, 1, 2, 3, 4, 5]
    last = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    # the optimizer state came along: a fresh optimizer would have taken only 4 steps
    assert last["global_step"] == 10 and _adam_steps(last) == 10
    assert torch.load(tmp_path / "model.pt", weights_only=True)["global_step"] == 10


def test_nan_batch_is_skipped_and_counted(tmp_path, monkeypatch):
    original = train_mod.loader
    poisoned = []

    def loader(mols, batch_size, shuffle, num_workers):
        dl = original(mols, batch_size, shuffle, num_workers)
        if not shuffle:  # validation stays clean
            return dl
        ds = dl.dataset

        def collate(index):
            b = ds.collate(index)
            if not poisoned:  # the second training batch gets a NaN coordinate
                poisoned.append(False)
            elif poisoned == [False]:
                b[P.R][3, 1] = float("nan")
                poisoned[0] = True
            return b

        return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=True, collate_fn=collate)

    monkeypatch.setattr(train_mod, "loader", loader)
    cfg = tiny_config("jt", **{"trainer.max_steps": 4})
    train_mod.train(cfg, tmp_path)
    assert poisoned == [True]
    summary = _summary(tmp_path)
    assert summary["skipped_batches"] == 1
    assert summary["global_step"] == 4  # the skipped batch took no optimizer step
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert _adam_steps(ckpt) == 4
    assert _all_finite(ckpt["state_dict"])
    assert _all_finite(torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"])
    logged = [float(r["skipped_batches"]) for r in _metrics(tmp_path) if r.get("skipped_batches")]
    assert logged[-1] == 1.0
    # every logged training loss is finite: the NaN batch was not logged as a loss
    assert all(np.isfinite(v) for _, v in _train_losses(tmp_path))


def test_loss_above_threshold_is_skipped(tmp_path, captured):
    cfg = tiny_config("ddpm", **{"optim.skip_loss_above": 0.0, "trainer.max_epochs": 1, "data.limit_train": 32})
    train_mod.train(cfg, tmp_path)
    summary = _summary(tmp_path)
    assert summary["skipped_batches"] == 2 and summary["global_step"] == 0
    export = torch.load(tmp_path / "model.pt", weights_only=True)
    assert export["skipped_batches"] == 2
    # nothing was applied: the exported weights are still the initial ones
    initial = captured[0].initial_model.state_dict()
    assert all(torch.equal(v, initial[k]) for k, v in export["state_dict"].items())


def test_train_on_own_structures(tmp_path, test_molecules):
    frames = []
    for k in range(20):
        x, z = test_molecules.molecule(k % len(test_molecules))
        frames.append(Atoms(numbers=z, positions=x.astype(np.float64) + 0.01 * k))
    data = tmp_path / "own.extxyz"
    ase.io.write(data, frames, format="extxyz")
    split = tmp_path / "split.json"
    split.write_text(json.dumps({"val": [0, 1, 2], "test": [19]}))
    cfg = tiny_config("jt", **{"data.source": str(data), "data.split_file": str(split), "trainer.max_steps": 2,
                               "data.limit_train": None})
    out = tmp_path / "run"
    train_mod.train(cfg, out)
    info = _summary(out)["dataset"]
    assert info["name"] == str(data) and info["n_train"] == 16 and info["n_val"] == 3
    assert info["max_atoms"] == max(len(a) for a in frames)
    lm = load_model(out / "model.pt")
    assert lm.elements == set(info["elements"])


# ------------------------------------------------------------------------------------ DDP
TINY_SET = ["--set", "model.representation={n_features: 16, n_interactions: 1, n_rbf: 8}",
            "--set", "data.limit_val=16", "--set", "trainer.val_every_steps=2",
            "--set", "trainer.log_every_steps=1", "--set", "trainer.checkpoint_every_steps=2"]


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    """Lightning DDP (gloo) with two CPU processes through the command line."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "morered.cli", "train", "--out", str(out), "--devices", "2", "--accelerator", "cpu",
           "--max-steps", "3", "--limit-train", "32", "--batch-size", "8", *TINY_SET]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = _summary(out)
    assert summary["global_step"] == 3
    assert summary["dataset"]["n_train"] == 32
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    lm = load_model(out / "model.pt")
    assert lm.model_type == "jt"
    assert "Starting with 2 processes" in proc.stdout + proc.stderr


def test_training_stops_when_every_batch_is_bad(tmp_path, monkeypatch):
    """A diverged model (or NaN data) must not loop forever skipping batches."""
    from morered.training import task as task_mod

    monkeypatch.setattr(task_mod, "MAX_CONSECUTIVE_SKIPS", 3)
    original = task_mod.DiffusionTask.losses

    def nan_losses(self, model, batch, generator=None):
        out = original(self, model, batch, generator)
        out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(task_mod.DiffusionTask, "losses", nan_losses)
    with pytest.raises(RuntimeError, match="in a row"):
        train_mod.train(tiny_config("jt", **{"trainer.max_steps": 5}), tmp_path)


def test_fp16_loss_scaling_is_refused_with_a_reason():
    from morered.training.config import load_config

    with pytest.raises(ValueError, match="bf16-mixed"):
        load_config(None, {"trainer.precision": "16-mixed"})
    assert load_config(None, {"trainer.precision": "bf16-mixed"})["trainer"]["precision"] == "bf16-mixed"


def test_max_time_is_the_budget_of_each_run(tmp_path):
    """A resumed run gets its own --max-time (Lightning's Timer would carry the old time over and
    stop the resumed run before its first step)."""
    cfg = tiny_config("jt", **{"trainer.max_time": "3s"})
    train_mod.train(cfg, tmp_path)
    first = _summary(tmp_path)["global_step"]
    assert first > 0
    train_mod.train(cfg, tmp_path)
    assert _summary(tmp_path)["global_step"] > first


def test_cosine_lr_arithmetic():
    from morered.training.base import cosine_lr

    assert cosine_lr(0, 11, 1e-3, 1e-5) == pytest.approx(1e-3)
    assert cosine_lr(5, 11, 1e-3, 1e-5) == pytest.approx(0.5 * (1e-3 + 1e-5))  # half way: the mean
    assert cosine_lr(10, 11, 1e-3, 1e-5) == pytest.approx(1e-5)  # the last step runs at min_lr
    assert cosine_lr(50, 11, 1e-3, 1e-5) == pytest.approx(1e-5)
    lrs = [cosine_lr(k, 11, 1e-3, 0.0) for k in range(11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert cosine_lr(0, 1, 1e-3, 0.0) == 1e-3


def _lrs(out, version=None):
    return [(int(r["step"]), float(r["lr"])) for r in _metrics(out, version) if r.get("lr")]


def test_cosine_schedule_anneals_over_max_steps_and_survives_a_resume(tmp_path):
    from morered.training.base import cosine_lr

    over = {"optim.schedule": "cosine", "optim.lr": 1e-3, "optim.min_lr": 1e-5, "trainer.val_every_steps": 2}
    train_mod.train(tiny_config("jt", **over, **{"trainer.max_steps": 6}), tmp_path)
    first = _lrs(tmp_path)
    assert [s for s, _ in first] == list(range(6))
    assert [v for _, v in first] == pytest.approx([cosine_lr(k, 6, 1e-3, 1e-5) for k in range(6)])
    assert first[-1][1] == pytest.approx(1e-5)  # validation losses did not touch it (no plateau schedule)
    # a resume with a larger budget continues the step count on the new budget's curve
    train_mod.train(tiny_config("jt", **over, **{"trainer.max_steps": 10}), tmp_path)
    second = _lrs(tmp_path)
    assert len(second) == 4  # steps 6..9 (the resumed run's logged step labels are Lightning's)
    assert [v for _, v in second] == pytest.approx([cosine_lr(k, 10, 1e-3, 1e-5) for k in range(6, 10)])


def test_schedule_options_are_checked():
    with pytest.raises(ValueError, match="trainer.max_steps"):
        load_config(None, {"optim.schedule": "cosine"})  # nothing to anneal over
    with pytest.raises(ValueError, match="plateau or cosine"):
        load_config(None, {"optim.schedule": "linear", "trainer.max_steps": 10})
    with pytest.raises(ValueError, match="min_lr"):
        load_config(None, {"optim.min_lr": 1.0, "optim.lr": 1e-3})
    assert load_config(None, {"optim.schedule": "cosine", "trainer.max_steps": 10})["optim"]["schedule"] == "cosine"


def test_ema_warmup_arithmetic():
    """decay_n = min(max, (1+n)/(10+n)): 0.1 at the first update, max after ~10/(1-max) updates;
    after N updates the EMA keeps far less of its random start than 0.999^N."""
    from torch import nn

    from morered.training.ema import ema_decay, update_ema

    assert ema_decay(0, 0.999) == pytest.approx(0.1)
    assert ema_decay(10, 0.999) == pytest.approx(11 / 20)
    assert ema_decay(100_000, 0.999) == 0.999
    assert ema_decay(0, 0.999, warmup=False) == 0.999
    ema, model = nn.Linear(3, 1, bias=False), nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        ema.weight.fill_(1.0)   # "random" start
        model.weight.fill_(0.0)  # trained weights
    n = 2000
    for k in range(n):
        update_ema(ema, model, ema_decay(k, 0.999))
    # share of the start still in the EMA: prod_k decay_k
    expected = 1.0
    for k in range(n):
        expected *= ema_decay(k, 0.999)
    assert float(ema.weight[0, 0]) == pytest.approx(expected, rel=1e-4)
    assert expected < 0.05 * 0.999**n


def test_init_from_copies_weights_and_refuses_other_networks(tiny_model_path):
    from morered.training.task import DiffusionTask, init_from_model

    torch.manual_seed(5)
    task = DiffusionTask(tiny_config("jt"))
    saved = torch.load(tiny_model_path, weights_only=True)["state_dict"]
    assert not all(torch.equal(v, saved[k]) for k, v in task.model.state_dict().items())
    init_from_model(task, tiny_model_path)
    for k, v in saved.items():
        assert torch.equal(task.model.state_dict()[k], v) and torch.equal(task.ema.state_dict()[k], v)
    other = DiffusionTask(tiny_config("jt", **{"model.representation": {"n_features": 8, "n_interactions": 2, "n_rbf": 8}}))
    with pytest.raises(ValueError, match="differs"):
        init_from_model(other, tiny_model_path)


def test_init_from_jt_gives_a_ddpm_or_time_network_its_matching_parts(tiny_model_path, tmp_path):
    """The AS/ITP pair can start from a JT model: representation + the head each network has."""
    from morered.training.task import DiffusionTask, init_from_model, save_model

    saved = torch.load(tiny_model_path, weights_only=True)["state_dict"]
    for model_type, head in (("ddpm", "noise_head"), ("time", "time_head")):
        torch.manual_seed(7)
        task = DiffusionTask(tiny_config(model_type))
        info = init_from_model(task, tiny_model_path)
        assert info["fresh"] == []
        state = task.model.state_dict()
        assert set(state) < set(saved)  # the other head is left out, nothing else
        assert any(k.startswith(head) for k in state)
        for k, v in state.items():
            assert torch.equal(v, saved[k]) and torch.equal(task.ema.state_dict()[k], v), k
    # the other way round: a JT network from a noise-only file keeps a fresh time head
    torch.manual_seed(8)
    ddpm = DiffusionTask(tiny_config("ddpm"), {"elements": [1, 6, 7, 8, 9], "max_atoms": 29})
    path = tmp_path / "ddpm.pt"
    save_model(ddpm, path)
    torch.manual_seed(9)
    jt = DiffusionTask(tiny_config("jt"))
    before = {k: v.clone() for k, v in jt.model.state_dict().items() if k.startswith("time_head")}
    info = init_from_model(jt, path)
    assert info["fresh"] == ["time_head"]
    for k, v in before.items():
        assert torch.equal(jt.model.state_dict()[k], v)
    exported = torch.load(path, weights_only=True)["state_dict"]
    noise = [k for k in exported if k.startswith("noise_head")]
    assert noise and all(torch.equal(jt.model.state_dict()[k], exported[k]) for k in noise)


def _assert_same_function(source, task, batch, t_norm) -> None:
    """``task``'s model and EMA compute what ``source`` computes, on both kernels, with the given
    time and (noise head conditioned on its own prediction) without."""
    for module in (task.model, task.ema):
        for kernel in ("auto", "edges"):
            source.kernel = module.kernel = kernel
            with torch.no_grad():
                want, got = source(batch, t_norm), module(batch, t_norm)
                want_own, got_own = source(batch), module(batch)
            for key in want:
                torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-6)
                torch.testing.assert_close(got_own[key], want_own[key], rtol=1e-5, atol=1e-6)


def test_init_from_a_shallower_network_grows_it_without_changing_its_function(tiny_model_path, test_molecules):
    """A deeper PaiNN (more blocks, same width) starts from a shallower model file: the file's
    blocks are copied, the new ones are identity maps (same outputs, both kernels), and the zeroed
    last layers of the new blocks receive gradients, so they train."""
    from morered.training.task import init_from_model

    source = load_model(tiny_model_path).model
    rep = dict(tiny_config("jt")["model"]["representation"])
    torch.manual_seed(11)
    task = DiffusionTask(tiny_config("jt", **{"model.representation": {**rep, "n_interactions": rep["n_interactions"] + 2}}))
    info = init_from_model(task, tiny_model_path)
    n = rep["n_interactions"]
    assert info["grown"] == f"{n} -> {n + 2} blocks" and info["fresh"] == []
    deep = task.model.representation
    assert len(deep.interactions) == n + 2
    batch = test_molecules.batch(range(4))
    t_norm = torch.tensor([0.05, 0.2, 0.5, 0.9])
    _assert_same_function(source, task, batch, t_norm)
    # the new blocks train: their zeroed last layers get gradients from the first step
    task.model.kernel = "auto"
    task.model.zero_grad()
    out = task.model(batch, t_norm)
    (out[P.eps_pred] ** 2).sum().backward()
    for k in (n, n + 1):
        assert deep.interactions[k].phi[-1].weight.abs().max() == 0
        assert deep.interactions[k].phi[-1].weight.grad.abs().max() > 0
    assert deep.mixing[n + 1].intra[-1].weight.grad.abs().max() > 0
    # the old blocks' filters are the file's, the new ones keep their own initialisation
    saved = torch.load(tiny_model_path, weights_only=True)["state_dict"]["representation.filter_net.weight"]
    assert torch.equal(deep.filter_net.weight[: saved.shape[0]], saved)
    assert deep.filter_net.weight[saved.shape[0]:].abs().max() > 0
    # shallower than the file, or another width: refused
    for other in ({**rep, "n_interactions": 1}, {**rep, "n_features": rep["n_features"] * 2, "n_interactions": n + 1}):
        with pytest.raises(ValueError, match="differs"):
            init_from_model(DiffusionTask(tiny_config("jt", **{"model.representation": other})), tiny_model_path)


def test_a_force_field_grows_from_its_shallower_self(tmp_path):
    """The same warm start for the force field: energies and forces unchanged after growing."""
    from test_forcefield import batch as ff_batch, synthetic_labels

    from morered.forcefield.model import load_forcefield
    from morered.training.forcefield import ForceFieldTask
    from morered.training.task import init_from_model

    synthetic_labels(tmp_path / "labels.npz")
    over = {"forcefield.labels": str(tmp_path / "labels.npz"), "data.batch_size": 4, "trainer.max_steps": 2,
            "trainer.val_every_steps": 2}
    path = train_mod.train(tiny_config("forcefield", **over), tmp_path / "run")
    rep = dict(tiny_config("forcefield")["model"]["representation"])
    cfg = tiny_config("forcefield", **over, **{"model.representation": {**rep, "n_interactions": rep["n_interactions"] + 1}})
    torch.manual_seed(3)
    task = ForceFieldTask(cfg, torch.load(path, weights_only=True)["dataset_info"])
    assert init_from_model(task, path)["grown"] is not None
    b = ff_batch()
    b[P.R] = b[P.R].float()
    want, got = load_forcefield(path)(b), task.ema(b)
    torch.testing.assert_close(got[P.energy], want[P.energy], rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(got[P.forces], want[P.forces], rtol=1e-5, atol=1e-5)


def test_init_from_a_narrower_network_widens_it_without_changing_its_function(tiny_model_path, test_molecules):
    """A wider PaiNN (more features, same depth) starts from a narrower model file: the file's
    weights sit in the first channels of every chunk, the weights from new channels into old ones
    are zero, so the outputs are unchanged (both kernels, model and EMA), while the new channels
    carry values and the zero weights get gradients (they train)."""
    from morered.training.task import init_from_model

    source = load_model(tiny_model_path).model
    rep = dict(tiny_config("jt")["model"]["representation"])
    f = rep["n_features"]
    torch.manual_seed(5)
    task = DiffusionTask(tiny_config("jt", **{"model.representation": {**rep, "n_features": f + 8}}))
    info = init_from_model(task, tiny_model_path)
    assert info["grown"] == f"{f} -> {f + 8} features" and info["fresh"] == []
    batch = test_molecules.batch(range(4))
    t_norm = torch.tensor([0.05, 0.2, 0.5, 0.9])
    _assert_same_function(source, task, batch, t_norm)
    wide = task.model
    wide.kernel = "auto"
    with torch.no_grad():
        s, v = wide.represent(batch)
    assert s[:, f:].abs().max() > 0 and v[..., f:].abs().max() > 0  # the new channels carry values
    wide.zero_grad()
    out = wide(batch, t_norm)
    ((out[P.eps_pred] ** 2).sum() + (out[P.t_pred] ** 2).sum()).backward()
    phi0 = wide.representation.interactions[1].phi[0]
    assert phi0.weight[:f, f:].abs().max() == 0 and phi0.weight.grad[:f, f:].abs().max() > 0
    first = wide.noise_head.blocks[0].scalar_net[0]  # input [s (f + 8), t/T, |Vv|], output f + 8 hidden
    assert first.weight[:f, f:f + 8].abs().max() == 0 and first.weight.grad[:f, f:f + 8].abs().max() > 0
    assert first.weight[f:, f:f + 8].abs().max() > 0  # new hidden units read new channels from the start
    # narrower than the file: refused
    with pytest.raises(ValueError, match="differs"):
        init_from_model(DiffusionTask(tiny_config("jt", **{"model.representation": {**rep, "n_features": f - 4}})),
                        tiny_model_path)


def test_widening_refuses_a_network_with_an_undescribed_layer(tiny_model_path):
    from morered.nn.blocks import Dense
    from morered.nn.widen import check_widening

    model = load_model(tiny_model_path).model
    check_widening(model)
    model.extra = Dense(4, 4)
    with pytest.raises(ValueError, match="extra"):
        check_widening(model)


def test_a_force_field_with_dens_widens_from_its_narrower_self(tmp_path):
    """Energies, forces and the DeNS noise prediction unchanged after widening a force field."""
    from test_forcefield import batch as ff_batch, synthetic_labels

    from morered.forcefield.model import load_forcefield
    from morered.training.forcefield import ForceFieldTask
    from morered.training.task import init_from_model

    synthetic_labels(tmp_path / "labels.npz")
    over = {"forcefield.labels": str(tmp_path / "labels.npz"), "data.batch_size": 4, "trainer.max_steps": 2,
            "trainer.val_every_steps": 2, "forcefield.dens": True}
    path = train_mod.train(tiny_config("forcefield", **over), tmp_path / "run")
    rep = dict(tiny_config("forcefield")["model"]["representation"])
    cfg = tiny_config("forcefield", **over, **{"model.representation": {**rep, "n_features": rep["n_features"] + 6}})
    torch.manual_seed(4)
    task = ForceFieldTask(cfg, torch.load(path, weights_only=True)["dataset_info"])
    assert "features" in init_from_model(task, path)["grown"]
    b = ff_batch()
    b[P.R] = b[P.R].float()
    f_in = torch.randn(b[P.R].shape) * 0.1
    ref = load_forcefield(path)
    for kernel in ("auto", "edges"):
        ref.kernel = task.ema.kernel = kernel
        want, got = ref(b, force_input=f_in), task.ema(b, force_input=f_in)
        for key in (P.energy, P.forces, P.noise_pred):
            torch.testing.assert_close(got[key], want[key], rtol=1e-5, atol=1e-4)
