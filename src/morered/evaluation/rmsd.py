"""RMSD after optimal superposition (Kabsch), RMSD ratio and the failure criterion (SPEC §7)."""

from __future__ import annotations

import math

import numpy as np


def heavy_atoms(numbers: np.ndarray) -> np.ndarray:
    """Boolean mask ``[n]`` of the atoms that are not hydrogen."""
    return np.asarray(numbers) > 1


def _kabsch(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None):
    """Rotation ``R`` (det +1) and centroids so that ``(x - cx) @ R.T + cr`` best fits ``ref``."""
    x = np.asarray(x, dtype=np.float64)
    ref = np.asarray(ref, dtype=np.float64)
    if x.shape != ref.shape or x.ndim != 2 or x.shape[1] != 3:
        raise ValueError(f"positions must both be [n, 3]; got {x.shape} and {ref.shape}")
    sel = np.ones(len(x), bool) if mask is None else np.asarray(mask, bool)
    if sel.shape != (len(x),) or not sel.any():
        raise ValueError("mask must select at least one of the atoms")
    p, q = x[sel], ref[sel]
    cx, cr = p.mean(0), q.mean(0)
    h = (p - cx).T @ (q - cr)  # [3, 3] covariance
    u, _, vt = np.linalg.svd(h)
    # a reflection would fit better when det < 0: flip the weakest axis to keep a proper rotation
    d = 1.0 if np.linalg.det(vt.T @ u.T) >= 0 else -1.0
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, cx, cr


def kabsch_align(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """``x`` rotated (proper rotation only) and translated onto ``ref``.

    Args:
        x, ref: positions ``[n, 3]`` (Å) in the same atom order.
        mask: optional boolean ``[n]``: the atoms the fit uses; all atoms are moved.
    Returns:
        aligned positions ``[n, 3]`` float64.
    """
    rot, cx, cr = _kabsch(x, ref, mask)
    return (np.asarray(x, np.float64) - cx) @ rot.T + cr


def kabsch_rmsd(x: np.ndarray, ref: np.ndarray, mask: np.ndarray | None = None) -> float:
    """RMSD (Å) between ``x`` and ``ref`` after the optimal rotation and translation.

    The same atoms (``mask``, e.g. :func:`heavy_atoms`; default all) are used for the fit and for
    the RMSD.  Atoms must be in the same order; no permutation is searched.
    """
    rot, cx, cr = _kabsch(x, ref, mask)
    sel = slice(None) if mask is None else np.asarray(mask, bool)
    d = (np.asarray(x, np.float64)[sel] - cx) @ rot.T + cr - np.asarray(ref, np.float64)[sel]
    return float(np.sqrt((d**2).sum(1).mean()))


def rmsd_ratio(relaxed_rmsd: float | None, input_rmsd: float) -> float:
    """RMSD(relaxed, ref) / RMSD(input, ref).

    A missing or non-finite relaxed RMSD (the method failed on the structure) gives ``inf``.  An
    input that already equals the reference gives 1 if the result equals it too, else ``inf``.
    """
    if relaxed_rmsd is None or not math.isfinite(relaxed_rmsd):
        return math.inf
    if input_rmsd <= 0.0:
        return 1.0 if relaxed_rmsd <= 0.0 else math.inf
    return float(relaxed_rmsd) / float(input_rmsd)


def is_failure(ratio: float, tol: float = 0.0) -> bool:
    """A relaxation failed when it moved the structure away from the reference: ratio > 1 + tol.

    ``tol`` (relative) lets a method that returns its input up to rounding (e.g. an optimiser
    started at its own minimum, ratio 1 + 1e-9) pass.  NaN (undefined) is a failure.
    """
    return not (ratio <= 1.0 + tol)
