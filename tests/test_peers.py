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

    monkeypatch.setitem(B.PEER_RELAX, "ani1x", fake)
    monkeypatch.setattr(B, "peer_available", lambda m: (True, ""))
    res = B.run_relax_benchmark(n=2, out=tmp_path, methods=("ani1x",), kinds=("diffused_50",), max_steps=7,
                                fmax=0.01, progress=False, cache=False)
    assert calls == [{"fmax": 0.01}] * 2
    assert {r["method"] for r in res["rows"]} == {"ani1x"}


@pytest.mark.parametrize("method", ["ani1x"])
def test_ani1x_relaxes_a_small_molecule_when_installed(method):
    pytest.importorskip("torchani")
    x = np.array([[0.0, 0.0, 0.0], [0.0, 0.0, 1.25], [0.95, 0.0, -0.3], [-0.5, 0.8, -0.3], [-0.5, -0.8, -0.3]])
    r = peers.relax_peer(method, [6, 8, 1, 1, 1], x, max_steps=200, fmax=0.01)
    assert r.error is None and r.converged and np.isfinite(r.positions).all()
