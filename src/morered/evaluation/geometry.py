"""Bond-length and bond-angle errors against the reference, by bond type.

RMSD hides what costs energy: a structure 0.05 Å RMSD from the minimum can still have C-H bonds
0.02 Å too long, which alone costs several kcal/mol.  These errors are cheap and say where the
energy goes.

The bond graph comes from the **reference** geometry by covalent radii: atoms i, j are bonded when
``d_ij < BOND_FACTOR * (r_i + r_j)`` with ASE's covalent radii (Cordero et al. 2008), and the same
pairs are measured in the structure.  Angles are every i-j-k with i-j and j-k bonded (vertex j).
Bond types are element pairs with hydrogen last and otherwise by atomic number: ``C-H``, ``C-C``,
``C-N``, ``C-O``, ``N-H``, ``O-H``, ``C-F`` ...
"""

from __future__ import annotations

import numpy as np

#: bonded when the distance is below this multiple of the sum of covalent radii (RDKit's
#: DetermineConnectivity uses 1.3 with its own radii; 1.2 keeps 1-3 contacts in strained QM9 cages out)
BOND_FACTOR = 1.2


def _symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[int(z)]


def bond_type(za: int, zb: int) -> str:
    """``"C-H"``, ``"C-N"``, ``"N-H"``...: hydrogen last, otherwise lower atomic number first."""
    a, b = sorted((int(za), int(zb)), key=lambda z: (z == 1, z))
    return f"{_symbol(a)}-{_symbol(b)}"


def bond_graph(numbers, ref_positions, factor: float = BOND_FACTOR) -> np.ndarray:
    """Bonded pairs ``[n_bonds, 2]`` (i < j) of the reference by covalent radii."""
    from ase.data import covalent_radii

    z = np.asarray(numbers, int)
    x = np.asarray(ref_positions, np.float64)
    d = np.linalg.norm(x[:, None] - x[None], axis=-1)
    r = covalent_radii[z]
    i, j = np.nonzero(np.triu(d < factor * (r[:, None] + r[None]), k=1))
    return np.stack([i, j], axis=1)


def _angles(x: np.ndarray, triples: np.ndarray) -> np.ndarray:
    """Angles (degrees) i-j-k for ``triples [m, 3]``."""
    if not len(triples):
        return np.zeros(0)
    u = x[triples[:, 0]] - x[triples[:, 1]]
    v = x[triples[:, 2]] - x[triples[:, 1]]
    c = (u * v).sum(1) / (np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1))
    return np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))


def angle_triples(bonds: np.ndarray, n_atoms: int) -> np.ndarray:
    """Every bonded i-j-k (i < k) with vertex j: ``[m, 3]``."""
    nbr = [[] for _ in range(n_atoms)]
    for i, j in bonds:
        nbr[i].append(int(j))
        nbr[j].append(int(i))
    out = [(a, j, b) for j in range(n_atoms) for ia, a in enumerate(sorted(nbr[j])) for b in sorted(nbr[j])[ia + 1:]]
    return np.asarray(out, dtype=int).reshape(-1, 3)


def geometry_errors(numbers, ref_positions, positions) -> dict[str, float]:
    """Mean |Δ bond length| (Å) overall and per bond type, and mean |Δ angle| (degrees).

    Args:
        numbers: ``[n]``; ref_positions, positions: ``[n, 3]`` Å, same atom order.  ``positions
            = None`` (the method failed): every error is ``inf``.
    Returns:
        ``{"bond_err": Å, "angle_err": degrees, "bond_err_C-H": Å, ...}`` with one ``bond_err_<type>``
        per bond type present (NaN for angles in a molecule without any, e.g. H2).
    """
    z = np.asarray(numbers, int)
    ref = np.asarray(ref_positions, np.float64)
    bonds = bond_graph(z, ref)
    types = [bond_type(z[i], z[j]) for i, j in bonds]
    triples = angle_triples(bonds, len(z))
    failed = positions is None or not np.isfinite(np.asarray(positions, np.float64)).all()
    out: dict[str, float] = {}
    if failed:
        out["bond_err"] = np.inf if len(bonds) else np.nan
        out["angle_err"] = np.inf if len(triples) else np.nan
        out.update({f"bond_err_{t}": np.inf for t in sorted(set(types))})
        return out
    x = np.asarray(positions, np.float64)
    if len(bonds):
        dr = np.abs(np.linalg.norm(x[bonds[:, 0]] - x[bonds[:, 1]], axis=1)
                    - np.linalg.norm(ref[bonds[:, 0]] - ref[bonds[:, 1]], axis=1))
        out["bond_err"] = float(dr.mean())
    else:
        dr = np.zeros(0)
        out["bond_err"] = np.nan
    out["angle_err"] = float(np.abs(_angles(x, triples) - _angles(ref, triples)).mean()) if len(triples) else np.nan
    for t in sorted(set(types)):
        out[f"bond_err_{t}"] = float(dr[[k for k, tt in enumerate(types) if tt == t]].mean())
    return out
