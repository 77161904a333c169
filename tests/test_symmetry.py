"""Equivariance of the noise head and invariance of the time head, in float64, for every
representation (PaiNN and SO3Net)."""

import pytest
import torch

from conftest import random_rotation
from morered import properties as P
from morered.nn.model import DiffusionModel


@pytest.fixture(scope="module", params=["dense", "edges", "mixed", "so3net"])
def setup(test_molecules, request):
    """Every symmetry holds for both PaiNN kernels, for a batch split between them, and for SO3Net."""
    torch.manual_seed(0)
    name = "so3net" if request.param == "so3net" else "painn"
    model = DiffusionModel({"name": name, "n_features": 16, "n_interactions": 2, "n_rbf": 8}).double().eval()
    if name == "painn":
        model.kernel = "edges" if request.param == "edges" else "dense"
    if request.param == "mixed":  # molecules above 9 atoms take the edge list inside forward_dense
        model.representation.max_dense_atoms = 9
    batch = test_molecules.batch(range(4))
    batch[P.R] = batch[P.R].double()
    t = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    return model, batch, t


def _run(model, batch, t):
    with torch.no_grad():
        return model(batch, t), model(batch)  # given t, and conditioned on its own prediction


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection(setup, reflect):
    model, batch, t = setup
    g = torch.Generator().manual_seed(1 + reflect)
    Q = random_rotation(g, reflect)
    rotated = {**batch, P.R: batch[P.R] @ Q.T}
    for ref, rot in zip(_run(model, batch, t), _run(model, rotated, t)):
        torch.testing.assert_close(rot[P.eps_pred], ref[P.eps_pred] @ Q.T, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(rot[P.t_pred], ref[P.t_pred], rtol=1e-9, atol=1e-10)
    assert not torch.allclose(_run(model, rotated, t)[0][P.eps_pred], _run(model, batch, t)[0][P.eps_pred])


def test_translation(setup):
    model, batch, t = setup
    shift = torch.tensor([1.5, -2.0, 0.3], dtype=torch.float64)
    moved = {**batch, P.R: batch[P.R] + shift}
    for ref, mov in zip(_run(model, batch, t), _run(model, moved, t)):
        torch.testing.assert_close(mov[P.eps_pred], ref[P.eps_pred], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(mov[P.t_pred], ref[P.t_pred], rtol=1e-9, atol=1e-10)


def test_permutation_within_molecules(setup):
    model, batch, t = setup
    g = torch.Generator().manual_seed(3)
    idx_m = batch[P.idx_m]
    perm = torch.cat([torch.nonzero(idx_m == m).flatten()[torch.randperm(int((idx_m == m).sum()), generator=g)]
                      for m in range(int(idx_m.max()) + 1)])
    permuted = {**batch, P.R: batch[P.R][perm], P.Z: batch[P.Z][perm]}
    for ref, per in zip(_run(model, batch, t), _run(model, permuted, t)):
        torch.testing.assert_close(per[P.eps_pred], ref[P.eps_pred][perm], rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(per[P.t_pred], ref[P.t_pred], rtol=1e-9, atol=1e-10)


def test_noise_is_centred_and_molecules_independent(setup):
    model, batch, t = setup
    out = model(batch, t)
    from morered.data.batch import scatter_mean

    assert scatter_mean(out[P.eps_pred], batch[P.idx_m]).abs().max() < 1e-12
    # a molecule's output does not depend on the other molecules in the batch
    first = {k: v for k, v in batch.items()}
    n0 = int(batch[P.n_atoms][0])
    single = {P.R: batch[P.R][:n0], P.Z: batch[P.Z][:n0], P.idx_m: batch[P.idx_m][:n0], P.n_atoms: batch[P.n_atoms][:1]}
    torch.testing.assert_close(model(single, t[:1])[P.eps_pred], out[P.eps_pred][:n0], rtol=1e-9, atol=1e-10)
