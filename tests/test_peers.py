"""ML force fields as relaxation methods: skipped when missing, per-structure errors, benchmark rows."""

import numpy as np
import pytest

from morered.evaluation import benchmark as B
from morered.evaluation import peers


def test_unsupported_elements_are_a_per_structure_failure():
    # fluorine is not an ANI-1x element: a failed result with the reason, before any model loads
    r = peers.relax_peer("ani1x", [9, 6, 1, 1, 1], np.zeros((5, 3)) + np.arange(5)[:, None], max_steps=5)
    assert r.positions is None and not r.converged and "elements [9]" in r.error


def test_a_missing_package_is_reported_not_raised(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torchani" else real(name, *a))
    ok, why = peers.peer_available("ani1x")
    assert not ok and "torchani is not installed" in why
    ok, why = peers.peer_available("no-such-peer")
    assert not ok


def test_benchmark_skips_missing_peers_and_runs_the_rest(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "peer_available", lambda m: (False, f"{m}: not installed"))
    res = B.run_relax_benchmark(n=2, out=tmp_path, methods=("identity", "ani1x", "so3lr", "mlff"),
                                kinds=("diffused_50",), max_steps=5, progress=False, cache=False)
    assert set(res["skipped"]) == {"ani1x", "so3lr", "mlff"}
    assert {r["method"] for r in res["rows"]} == {"identity"}


def test_a_peer_row_uses_lbfgs_with_the_xtb_fmax(tmp_path, monkeypatch):
    calls = []

    def fake(numbers, positions, ref_positions=None, max_steps=1000, **opts):
        calls.append(opts)
        return peers.BaselineResult(np.array(positions, float), 1, True, 0.01)

    monkeypatch.setitem(B.PEER_RELAX, "so3lr", fake)
    monkeypatch.setattr(B, "peer_available", lambda m: (True, ""))
    res = B.run_relax_benchmark(n=2, out=tmp_path, methods=("so3lr",), kinds=("diffused_50",), max_steps=7,
                                fmax=0.01, progress=False, cache=False)
    assert calls == [{"fmax": 0.01}] * 2
    assert {r["method"] for r in res["rows"]} == {"so3lr"}
    assert "so3lr: ASE L-BFGS, per structure" in (tmp_path / "summary.md").read_text()


def quadratic_peer(calls):
    """A stand-in batched force field: every atom pulled to the origin of its molecule's frame."""

    def evaluate(part):
        calls.append(len(part))
        return np.array([0.5 * (np.asarray(x) ** 2).sum() for _, x in part]), [-np.asarray(x, float) for _, x in part]

    return evaluate


def test_batched_peers_relax_all_structures_in_one_call_per_step(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(peers, "batched_evaluate", lambda m: quadratic_peer(calls))
    monkeypatch.setattr(B, "peer_available", lambda m: (True, ""))
    res = B.run_relax_benchmark(n=3, out=tmp_path, methods=("mlff",), kinds=("diffused_50",), max_steps=50,
                                fmax=0.01, progress=False, cache=False)
    assert calls[0] == 3 and len(calls) <= 51  # one evaluation of all running structures per iteration
    rows = res["rows"]
    assert [r["method"] for r in rows] == ["mlff"] * 3 and all(r["converged"] and r["steps"] > 0 for r in rows)
    assert "mlff: L-BFGS (ASE's steps), batched evaluation" in (tmp_path / "summary.md").read_text()


def test_batched_peer_fails_unsupported_structures_only(monkeypatch):
    calls = []
    monkeypatch.setattr(peers, "batched_evaluate", lambda m: quadratic_peer(calls))
    g = np.random.default_rng(0)
    out = peers.relax_batched("ani1x", [[6, 1, 1, 1, 1], [9, 6, 1, 1, 1], [8, 1, 1]],
                              [g.normal(size=(5, 3)), g.normal(size=(5, 3)), g.normal(size=(3, 3))], max_steps=100,
                              fmax=0.01)
    assert out[1].positions is None and "elements [9]" in out[1].error
    assert all(out[k].error is None and out[k].converged for k in (0, 2))
    assert calls[0] == 2  # the fluorine molecule never reached the model


@pytest.mark.parametrize("method", ["ani1x"])
def test_ani1x_relaxes_a_small_molecule_when_installed(method):
    pytest.importorskip("torchani")
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.25], [0.95, 0.0, -0.3], [-0.5, 0.8, -0.3], [-0.5, -0.8, -0.3]])
    r = peers.relax_peer(method, [6, 8, 1, 1, 1], x, max_steps=200, fmax=0.01)
    assert r.error is None and r.converged and np.isfinite(r.positions).all()
    # the batched path (padded batch, autograd forces in eV/Å) takes the same L-BFGS steps
    water = np.array([[0.0, 0.0, 0.1], [0.0, 0.8, -0.5], [0.0, -0.7, -0.4]])
    both = peers.relax_batched(method, [[6, 8, 1, 1, 1], [8, 1, 1]], [x, water], max_steps=200, fmax=0.01)
    assert both[0].steps == r.steps and both[0].converged
    np.testing.assert_allclose(both[0].positions, r.positions, atol=1e-6)
    assert both[1].converged and both[1].error is None
