"""The training losses exactly as SPEC §5 writes them, and the distribution of training steps."""

import pytest
import torch
from torch import nn

from conftest import tiny_config
from morered import properties as P
from morered.diffusion.schedule import diffuse
from morered.training.task import DiffusionTask, sample_t


class Recorder(nn.Module):
    """Returns fixed outputs and records what the task fed it."""

    def __init__(self, eps_pred_value=0.25, t_atom_value=0.3):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.eps_v, self.t_v = eps_pred_value, t_atom_value
        self.seen = []

    def forward(self, batch, t_norm=None):
        self.seen.append((batch[P.R].clone(), None if t_norm is None else t_norm.clone()))
        n_atoms, n_mol = len(batch[P.Z]), len(batch[P.n_atoms])
        t_atom = torch.full((n_atoms,), self.t_v) + self.w
        return {P.eps_pred: torch.full((n_atoms, 3), self.eps_v) + self.w, P.t_pred_atom: t_atom,
                P.t_pred: torch.full((n_mol,), self.t_v)}


def _expected(task, batch, seed):
    """t and eps the task draws from a generator with ``seed`` (same order of draws)."""
    d = task.config["diffusion"]
    g = torch.Generator().manual_seed(seed)
    t = sample_t(len(batch[P.n_atoms]), task.schedule.T, float(d["low_t_fraction"]), int(d["low_t_max"]), g)
    xt, eps = diffuse(batch[P.R], t, batch[P.idx_m], task.schedule, g)
    return t, xt, eps


@pytest.mark.parametrize("condition", ["predicted", "true"])
def test_jt_loss_formula_and_conditioning(test_molecules, condition):
    task = DiffusionTask(tiny_config("jt", **{"diffusion.jt_condition": condition, "diffusion.low_t_fraction": 0.5}))
    batch = test_molecules.batch(range(6))
    rec = Recorder()
    losses = task.losses(rec, batch, generator=torch.Generator().manual_seed(11))
    t, xt, eps = _expected(task, batch, 11)
    fed_x, fed_t = rec.seen[0]
    torch.testing.assert_close(fed_x, xt)  # the network sees x_t = sqrt(ab) x0 + sqrt(1 - ab) eps
    if condition == "predicted":
        assert fed_t is None  # the noise head is conditioned on the model's own time prediction
    else:
        torch.testing.assert_close(fed_t, t.float() / task.schedule.T)
    t_norm = (t.double() / task.schedule.T)[batch[P.idx_m]]
    noise = ((0.25 - eps.double()) ** 2).mean()  # mean over atoms and coordinates
    time = ((0.3 - t_norm) ** 2).mean()  # per atom, against t/T
    assert float(losses["noise"]) == pytest.approx(float(noise), rel=1e-5)
    assert float(losses["time"]) == pytest.approx(float(time), rel=1e-5)
    assert float(losses["loss"]) == pytest.approx(0.9 * float(noise) + 0.1 * float(time), rel=1e-5)


@pytest.mark.parametrize("model_type, term", [("ddpm", "noise"), ("time", "time")])
def test_single_head_losses(test_molecules, model_type, term):
    task = DiffusionTask(tiny_config(model_type))
    batch = test_molecules.batch(range(4))
    rec = Recorder()
    losses = task.losses(rec, batch, generator=torch.Generator().manual_seed(3))
    t, xt, eps = _expected(task, batch, 3)
    assert float(losses["loss"]) == pytest.approx(float(losses[term]), rel=1e-12)
    if model_type == "ddpm":  # the noise model is told the true step
        torch.testing.assert_close(rec.seen[0][1], t.float() / task.schedule.T)


def test_sampled_steps_range_and_low_t_fraction():
    g = torch.Generator().manual_seed(0)
    t = sample_t(200_000, 1000, 0.5, 300, g)
    assert int(t.min()) == 1 and int(t.max()) == 1000
    # half from U{1..300}, half from U{1..1000}: P(t <= 300) = 0.5 + 0.5 * 0.3
    assert float((t <= 300).double().mean()) == pytest.approx(0.65, abs=0.005)
    assert float((t == 1000).double().mean()) == pytest.approx(0.5 / 1000, rel=0.3)
    uniform = sample_t(200_000, 1000, 0.0, 300, g)
    assert float((uniform <= 300).double().mean()) == pytest.approx(0.3, abs=0.005)
