"""The dense and edge-list PaiNN kernels compute the same function with the same weights."""

import pytest
import torch

from morered import properties as P
from morered.nn.model import DiffusionModel
from morered.nn.painn import size_buckets


def _batch(test_molecules, noise=0.1):
    b = test_molecules.batch(range(8))
    g = torch.Generator().manual_seed(0)
    b[P.R] = b[P.R].double() + noise * torch.randn(b[P.R].shape, generator=g, dtype=torch.float64)
    return b


def _outputs_and_grads(model, batch, t):
    model.zero_grad()
    out = model(batch, t)
    loss = (out[P.eps_pred] ** 2).sum() + (out[P.t_pred_atom] ** 3).sum()
    loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("max_dense_atoms, ratio", [(64, 1.0), (9, 1.0), (64, 2.0), (9, 3.0)])
def test_dense_equals_edges_outputs_and_gradients(test_molecules, max_dense_atoms, ratio):
    """9: some molecules take the edge list; ratio > 1: molecules of different sizes share a
    padded bucket (the padding must neither send nor receive anything)."""
    torch.manual_seed(0)
    model = DiffusionModel({"n_features": 16, "n_interactions": 3, "n_rbf": 8}).double()
    model.representation.max_dense_atoms = max_dense_atoms
    model.representation.bucket_ratio = ratio
    batch = _batch(test_molecules)
    sizes = batch[P.n_atoms].tolist()
    assert len(set(sizes)) > 1 and any(n > 9 for n in sizes) and any(n <= 9 for n in sizes)
    t = torch.linspace(0.05, 0.9, len(sizes), dtype=torch.float64)
    model.kernel = "edges"
    ref, ref_g = _outputs_and_grads(model, batch, t)
    model.kernel = "dense"
    new, new_g = _outputs_and_grads(model, batch, t)
    for k in (P.eps_pred, P.t_pred, P.t_pred_atom):
        torch.testing.assert_close(new[k], ref[k], rtol=1e-6, atol=1e-9)
    assert ref_g.keys() == new_g.keys() and len(ref_g) == len(list(model.parameters()))
    for name in ref_g:
        torch.testing.assert_close(new_g[name], ref_g[name], rtol=1e-6, atol=1e-9, msg=name)


def test_shipped_model_same_in_both_kernels(test_molecules):
    from morered.sampling.models import load_model

    model = load_model("jt").model.double()
    batch = _batch(test_molecules)
    with torch.no_grad():
        model.kernel = "edges"
        ref = model(batch)
        model.kernel = "dense"
        new = model(batch)
    torch.testing.assert_close(new[P.eps_pred], ref[P.eps_pred], rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(new[P.t_pred], ref[P.t_pred], rtol=1e-6, atol=1e-9)


def test_auto_kernel_choice(test_molecules):
    batch = _batch(test_molecules)
    full = DiffusionModel({"n_features": 8, "n_interactions": 1, "n_rbf": 4, "cutoff": 5.0})
    assert full.use_dense(batch)
    assert not full.use_dense({**batch, P.edges: torch.zeros(2, 0, dtype=torch.long)})  # given edges
    short = DiffusionModel({"n_features": 8, "n_interactions": 1, "n_rbf": 4, "cutoff": 5.0},
                           graph="radius", graph_cutoff=3.0)
    assert not short.use_dense(batch)  # pairs between 3 and 5 Å would get messages in the dense kernel
    long = DiffusionModel({"n_features": 8, "n_interactions": 1, "n_rbf": 4, "cutoff": 5.0},
                          graph="radius", graph_cutoff=6.0)
    assert long.use_dense(batch)
    with pytest.raises(ValueError, match="kernel"):
        full.kernel = "sparse"


def test_radius_graph_beyond_cutoff_is_dense(test_molecules):
    """A radius graph at least as long as the cutoff equals all pairs: filters vanish beyond it."""
    torch.manual_seed(1)
    model = DiffusionModel({"n_features": 8, "n_interactions": 2, "n_rbf": 4, "cutoff": 3.0},
                           graph="radius", graph_cutoff=3.0).double()
    batch = _batch(test_molecules)
    model.kernel = "edges"
    ref = model(batch, torch.full((8,), 0.1, dtype=torch.float64))
    model.kernel = "auto"
    assert model.use_dense(batch)
    new = model(batch, torch.full((8,), 0.1, dtype=torch.float64))
    torch.testing.assert_close(new[P.eps_pred], ref[P.eps_pred], rtol=1e-6, atol=1e-9)


def test_size_buckets_partition_and_cap():
    sizes = [5, 3, 5, 9, 3, 5]
    b = size_buckets(sizes, max_pairs=50)  # two 5-atom molecules per bucket at most
    assert sorted(m for _, mols in b for m in mols) == list(range(len(sizes)))
    assert all(sizes[m] == n for n, mols in b for m in mols)
    assert all(len(mols) * n * n <= 50 or len(mols) == 1 for n, mols in b)
    assert [n for n, _ in b] == sorted(n for n, _ in b)
    padded = size_buckets(sizes, ratio=2.0)  # 3..5 share one bucket padded to 5, 9 its own
    assert padded == [(5, [1, 4, 0, 2, 5]), (9, [3])]
