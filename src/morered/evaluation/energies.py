"""Single-point energies for judging relaxed structures: DFT (PySCF) and GFN2-xTB (tblite).

QM9's references are B3LYP/6-31G(2df,p) minima computed with Gaussian, so :func:`dft_energy`
uses the same level (Gaussian's B3LYP, i.e. VWN1-RPA in the LDA part: PySCF ``b3lypg``) with
density fitting.  ΔE = E(structure) - E(reference) in kcal/mol; positive means the structure lies
above the reference minimum.
"""

from __future__ import annotations

import numpy as np

#: Hartree -> kcal/mol
HARTREE_TO_KCAL = 627.5094740631
#: eV -> kcal/mol
EV_TO_KCAL = 23.060547830619


def dft_energy(
    numbers,
    positions,
    basis: str = "6-31G(2df,p)",
    xc: str = "b3lypg",
    charge: int = 0,
    spin: int = 0,
    density_fit: bool = True,
    conv_tol: float = 1e-9,
    cart: bool = False,
) -> float:
    """Restricted Kohn-Sham DFT energy (Hartree) with PySCF.

    Absolute energies differ from QM9's (U0 - ZPVE) by a few mHa because Gaussian's default
    6-31G(2df,p) uses Cartesian d shells (6D) with pure f: with spherical shells (default here)
    CH4 is +0.5 mHa and H2O +4.9 mHa off, with ``cart=True`` (6D 10F) -1.9 and -0.3 mHa; an
    11-atom molecule was +8.9 / -9.0 mHa.  ΔE between structures of the same molecule at the
    same level cancels this.  About 1 s for H2O, ~1 min for an 11-atom QM9 molecule on 1 core.

    Args:
        numbers: ``[n]``; positions: ``[n, 3]`` Å.
        spin: 2S (number of unpaired electrons).
        cart: Cartesian basis shells.
    Raises:
        RuntimeError if the SCF does not converge.
    """
    from pyscf import dft, gto

    mol = gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(positions, np.float64))],
        basis=basis,
        unit="Angstrom",
        charge=charge,
        spin=spin,
        cart=cart,
        verbose=0,
    )
    mf = dft.RKS(mol) if spin == 0 else dft.UKS(mol)
    if density_fit:
        mf = mf.density_fit()
    mf.xc = xc
    mf.conv_tol = conv_tol
    e = mf.kernel()
    if not mf.converged:
        raise RuntimeError("PySCF SCF did not converge")
    return float(e)


def xtb_energy(numbers, positions, charge: int = 0) -> float:
    """GFN2-xTB single-point energy (eV) with tblite."""
    from ase import Atoms

    from morered.evaluation.baselines import xtb_calculator

    atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
    atoms.calc = xtb_calculator(charge=charge)
    return float(atoms.get_potential_energy())


def dft_threads() -> int:
    """Threads PySCF uses."""
    from pyscf import lib

    return int(lib.num_threads())
