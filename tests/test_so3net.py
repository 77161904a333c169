"""SO3Net's building blocks: orthonormal real spherical harmonics, their rotation matrices, and
equivariant Clebsch-Gordan couplings; and the representation's interface (PaiNN's)."""

import numpy as np
import pytest
import torch

from conftest import random_rotation
from morered.nn.so3net import SO3Coupling, SO3Net, clebsch_gordan, real_spherical_harmonics, sh_degrees, sphere_quadrature

LMAX = 3


def _Y(x, lmax=LMAX):
    return real_spherical_harmonics(torch.as_tensor(x, dtype=torch.float64), lmax).numpy()


def _wigner(Q, lmax=LMAX):
    """D with Y(Q r) = D Y(r), fitted by least squares on random directions; residual returned."""
    g = np.random.default_rng(0)
    r = g.normal(size=(200, 3))
    r /= np.linalg.norm(r, axis=1, keepdims=True)
    A, B = _Y(r, lmax), _Y(r @ Q.T, lmax)  # rows: Y(r)^T, Y(Qr)^T; B = A D^T
    Dt, *_ = np.linalg.lstsq(A, B, rcond=None)
    return Dt.T, np.abs(A @ Dt - B).max()


def test_spherical_harmonics_orthonormal():
    pts, w = sphere_quadrature(2 * LMAX + 4)
    assert abs(w.sum() - 4 * np.pi) < 1e-12
    Y = _Y(pts)
    gram = np.einsum("n,na,nb->ab", w, Y, Y)
    np.testing.assert_allclose(gram, np.eye((LMAX + 1) ** 2), atol=1e-12)


def test_spherical_harmonics_known_values():
    r = np.array([[0.6, 0.0, 0.8], [0.0, 1.0, 0.0]])
    Y = _Y(r)
    np.testing.assert_allclose(Y[:, 0], 1 / np.sqrt(4 * np.pi))
    np.testing.assert_allclose(Y[:, 1:4], np.sqrt(3 / (4 * np.pi)) * r[:, [1, 2, 0]])  # (y, z, x)
    # Y_20 = sqrt(5/16pi) (3z^2 - 1)
    np.testing.assert_allclose(Y[:, 6], np.sqrt(5 / (16 * np.pi)) * (3 * r[:, 2] ** 2 - 1))


@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_matrices_block_diagonal_orthogonal(reflect):
    Q = random_rotation(torch.Generator().manual_seed(5), reflect).numpy()
    D, residual = _wigner(Q)
    assert residual < 1e-10  # the span of each degree is closed under rotations: Y(Qr) = D Y(r)
    deg = sh_degrees(LMAX)
    np.testing.assert_allclose(D[deg[:, None] != deg[None, :]], 0, atol=1e-10)
    np.testing.assert_allclose(D @ D.T, np.eye(len(deg)), atol=1e-10)
    # parity: det(Q) = -1 multiplies degree l by (-1)^l relative to the rotation -Q
    Dp, _ = _wigner(-Q)
    np.testing.assert_allclose(D, Dp * ((-1.0) ** deg)[:, None], atol=1e-10)


def test_clebsch_gordan_parity_and_norm():
    C = clebsch_gordan(LMAX)
    deg = sh_degrees(LMAX)
    allowed = (deg[:, None, None] + deg[None, :, None] + deg[None, None, :]) % 2 == 0
    assert not C[~allowed].any()
    tri = (np.abs(deg[:, None, None] - deg[None, :, None]) <= deg[None, None, :]) & (
        deg[None, None, :] <= deg[:, None, None] + deg[None, :, None])
    assert not C[~tri].any()
    for l1, l2, l3 in [(0, 0, 0), (1, 1, 0), (1, 1, 2), (1, 2, 1), (2, 2, 2), (1, 2, 3)]:
        blk = C[np.ix_(deg == l1, deg == l2, deg == l3)]
        np.testing.assert_allclose((blk**2).sum(), 2 * l3 + 1)
    # l1 = 0 couples as the identity (scaled by Y_00's constant sign)
    np.testing.assert_allclose(np.abs(C[0]), np.eye(len(deg)), atol=1e-12)


@pytest.mark.parametrize("reflect", [False, True])
def test_clebsch_gordan_equivariant(reflect):
    """C(D a, D b) = D C(a, b) for every coupling, rotations and reflections."""
    Q = random_rotation(torch.Generator().manual_seed(7), reflect).numpy()
    D, _ = _wigner(Q)
    C = clebsch_gordan(LMAX)
    g = np.random.default_rng(1)
    a, b = g.normal(size=len(C)), g.normal(size=len(C))
    lhs = np.einsum("abc,a,b->c", C, D @ a, D @ b)
    np.testing.assert_allclose(lhs, D @ np.einsum("abc,a,b->c", C, a, b), atol=1e-10)
    # and the sparse channel-wise layer computes the same contraction
    x1 = torch.as_tensor(np.stack([a, 2 * a], -1))[None]
    x2 = torch.as_tensor(np.stack([b, -b], -1))[None]
    y = SO3Coupling(LMAX)(x1, x2)[0].numpy()
    np.testing.assert_allclose(y[:, 0], np.einsum("abc,a,b->c", C, a, b), atol=1e-12)
    np.testing.assert_allclose(y[:, 1], -2 * y[:, 0], atol=1e-12)


def test_interface_and_vector_order():
    """PaiNN's interface; v is the l = 1 part in (x, y, z): an atom pair along x gives v along x."""
    torch.manual_seed(0)
    net = SO3Net(n_features=8, n_interactions=2, lmax=2, n_rbf=6).double()
    assert net.n_features == 8 and net.cutoff == 5.0
    Z = torch.tensor([6, 8])
    R = torch.tensor([[0.0, 0.0, 0.0], [1.2, 0.0, 0.0]], dtype=torch.float64)
    edges = torch.tensor([[0, 1], [1, 0]])
    s, v = net(Z, R, edges)
    assert s.shape == (2, 8) and v.shape == (2, 3, 8)
    assert v[:, 0].abs().max() > 1e-6
    torch.testing.assert_close(v[:, 1:], torch.zeros_like(v[:, 1:]), atol=1e-12, rtol=0)
    with pytest.raises(ValueError, match="lmax"):
        SO3Net(lmax=0)


def test_float32_model_made_double_keeps_exact_couplings():
    net = SO3Net(n_features=4, n_interactions=1, lmax=2, n_rbf=4)
    net.float().double()
    assert net.product.cg(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
    np.testing.assert_array_equal(net.conv.cg(torch.zeros(1, dtype=torch.float64)).numpy(), clebsch_gordan(2))


@pytest.mark.parametrize("model_type", ["jt", "ddpm", "time"])
def test_every_model_type_trains_and_reloads(model_type, test_molecules, tmp_path):
    """``--set model.representation.name=so3net`` (with ``lmax``) passes config validation, gives a
    finite loss with gradients for every model type, and the exported model reloads equal."""
    from conftest import tiny_config
    from morered.sampling.models import load_model
    from morered.training.task import DiffusionTask, save_model

    cfg = tiny_config(model_type, **{"model.representation.name": "so3net", "model.representation.lmax": 2})
    torch.manual_seed(0)
    task = DiffusionTask(cfg, {"elements": [1, 6, 7, 8, 9], "max_atoms": 29})
    assert isinstance(task.model.representation, SO3Net)
    batch = test_molecules.batch(range(3))
    loss = task.losses(task.model, batch)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert task.model.representation.filters[0].weight.grad.abs().sum() > 0
    save_model(task, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt").model
    assert isinstance(loaded.representation, SO3Net)
    task.model.eval(), loaded.eval()
    args = () if model_type == "time" else (torch.full((3,), 0.3),)
    with torch.no_grad():
        ref, out = task.ema(batch, *args), loaded(batch, *args)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k])
