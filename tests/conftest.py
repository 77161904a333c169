"""Shared tiny fixtures: a few QM9 molecules and tiny untrained/trained models."""

import os

import numpy as np
import pytest
import torch

torch.set_num_threads(1)


def tiny_config(model_type="jt", **overrides):
    from morered.training.config import load_config

    base = {
        "model_type": model_type,
        "model.representation": {"n_features": 16, "n_interactions": 2, "n_rbf": 8},
        "data.batch_size": 16,
        "data.limit_train": 64,
        "data.limit_val": 32,
        "trainer.val_every_steps": 4,
        "trainer.checkpoint_every_steps": 2,
        "trainer.log_every_steps": 1,
        "trainer.accelerator": "cpu",
    }
    base.update(overrides)
    return load_config(None, base)


@pytest.fixture(scope="session")
def qm9():
    from morered.data.qm9 import load_qm9

    return load_qm9()


@pytest.fixture(scope="session")
def test_molecules(qm9):
    """Eight QM9 test-split molecules (ids from the fixed split)."""
    from morered.data.qm9 import split_ids

    return qm9.select_ids(split_ids(qm9)["test"][:8])


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory):
    """An untrained tiny JT model exported like a trained one (fast; for mechanics tests)."""
    from morered.training.task import DiffusionTask, save_model

    torch.manual_seed(0)
    task = DiffusionTask(tiny_config("jt"), {"elements": [1, 6, 7, 8, 9], "max_atoms": 29})
    path = tmp_path_factory.mktemp("models") / "tiny_jt.pt"
    save_model(task, path)
    return path


def random_rotation(generator, reflect=False) -> torch.Tensor:
    """Random orthogonal 3x3 matrix from QR, float64, det +1 (or -1 with reflect)."""
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=generator, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    if reflect:
        q = q @ torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    return q
