"""`morered benchmark train`: training and inference throughput (molecules/s) on QM9 batches."""

from __future__ import annotations

import time

import numpy as np
import torch

from morered import properties as P
from morered.data.batch import to_device
from morered.data.qm9 import load_qm9, split_ids
from morered.training.config import load_config
from morered.training.task import DiffusionTask


def bench_train(config: dict | None = None, batch_size: int = 128, n_batches: int = 10, warmup: int = 2,
                device: str = "cpu", seed: int = 0, kernel: str = "auto") -> dict:
    """Time ``n_batches`` optimizer steps (forward, backward, clipping, AdamW, EMA) and as many
    inference passes (JT forward: time head + noise head, no grad) on random QM9 training batches,
    with the representation's ``kernel`` (``auto``/``dense``/``edges``, see DiffusionModel).

    Returns ``{"train_mol_s", "infer_mol_s", "atoms_per_batch", "threads", "parameters"}``.
    """
    cfg = config or load_config()
    torch.manual_seed(seed)
    mols = load_qm9()
    train = mols.select_ids(split_ids(mols)["train"][:20000])
    rng = np.random.default_rng(seed)
    batches = [to_device(train.batch(rng.choice(len(train), batch_size, replace=False)), device)
               for _ in range(n_batches + warmup)]
    task = DiffusionTask(cfg).to(device)
    task.model.kernel = task.ema.kernel = kernel
    opt = task.configure_optimizers()["optimizer"]
    clip = float(cfg["optim"]["grad_clip"])

    def train_step(b):
        loss = task.losses(task.model, b)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(task.model.parameters(), clip)
        opt.step()
        task.update_ema()

    def infer_step(b):
        with torch.no_grad():
            task.ema(b)

    out = {}
    for name, step in (("train_mol_s", train_step), ("infer_mol_s", infer_step)):
        for b in batches[:warmup]:
            step(b)
        if device != "cpu":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for b in batches[warmup:]:
            step(b)
        if device != "cpu":
            torch.cuda.synchronize()
        out[name] = n_batches * batch_size / (time.perf_counter() - t0)
    out["atoms_per_batch"] = float(np.mean([len(b[P.Z]) for b in batches]))
    out["threads"] = torch.get_num_threads()
    out["parameters"] = sum(p.numel() for p in task.model.parameters())
    return out
