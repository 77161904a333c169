"""Structure displacements at the data floor (Gaussian, normal modes at several temperatures)."""

import numpy as np

from morered.data.displacements import gaussian, normal_mode_displacements
from morered.data.molecules import Molecules, Structures


def water(ids=(7,)):
    x = np.array([[0.0, 0.0, 0.1173], [0.0, 0.7572, -0.4692], [0.0, -0.7572, -0.4692]])
    return Structures(np.array(ids), [np.array([8, 1, 1])] * len(ids), [x.copy() for _ in ids])


def test_gaussian_scale_and_seed_per_id():
    refs = Structures(np.arange(200), [np.array([6] * 10)] * 200, [np.zeros((10, 3))] * 200)
    g = gaussian(refs, 0.1, seed=3)
    d = np.concatenate(g.positions)
    assert abs(d.std() - 0.1 * np.sqrt(9 / 10)) < 0.005  # re-centred: n-1 of n degrees of freedom
    # the same id gets the same displacement whatever else is in the set
    one = gaussian(Structures(np.array([57]), [refs.numbers[57]], [refs.positions[57]]), 0.1, seed=3)
    np.testing.assert_array_equal(one.positions[0], g.positions[57])
    assert not np.array_equal(gaussian(refs, 0.1, seed=4).positions[57], g.positions[57])


def test_normal_modes_shared_hessian_scales_with_temperature():
    refs = water()
    lo, hi = normal_mode_displacements(refs, (100.0, 400.0), seed=0)
    x0 = refs.positions[0] - refs.positions[0].mean(0)
    # the same draws scaled by sqrt(T): displacement ratio 2
    np.testing.assert_allclose(hi.positions[0] - x0, 2.0 * (lo.positions[0] - x0), atol=1e-9)
    a, b = normal_mode_displacements(refs, (100.0, 400.0), seed=0, independent=True)
    assert not np.allclose(b.positions[0] - x0, 2.0 * (a.positions[0] - x0), atol=1e-6)


def test_failed_structure_is_kept_with_its_reason():
    refs = water((1, 2))
    refs.positions[1] = None
    refs.errors[1] = "bad input"
    out = gaussian(refs, 0.05)
    assert out.positions[1] is None and "bad input" in out.errors[1] and out.positions[0] is not None


def test_structures_to_molecules_roundtrip():
    refs = water((4, 9))
    m = refs.to_molecules()
    assert isinstance(m, Molecules) and list(m.ids) == [4, 9]
    back = Structures.from_molecules(m)
    np.testing.assert_allclose(back.positions[1], refs.positions[1], atol=1e-6)
