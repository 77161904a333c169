"""Batched L-BFGS: ASE's L-BFGS, step for step, for many structures at once.

Every structure keeps its own L-BFGS history, step and convergence test, exactly as
``ase.optimize.LBFGS`` (no line search; defaults maxstep 0.2 Å, memory 100, alpha 70, damping 1;
converged when the largest per-atom force norm is below ``fmax``; ``steps`` counts optimizer steps
as ASE's ``nsteps``). Only the energy/force evaluation is shared: each iteration evaluates all
structures still running in one batched call, as MoreRed relaxes a batch. On a GPU that is what
makes an ML force field fast; on a CPU it saves little per structure (measured here: the shipped
PaiNN force field costs ~10 ms per structure and evaluation in float32 at batch 1 and at batch 128
alike). The per-structure arithmetic (the two-loop recursion) is numpy, microseconds per structure.

A structure whose forces come back non-finite stops with an error; the others go on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import numpy as np

#: ase.optimize.LBFGS defaults
MAXSTEP, MEMORY, ALPHA, DAMPING = 0.2, 100, 70.0, 1.0


@dataclass
class LBFGSState:
    """One structure's L-BFGS state (flat coordinates, as ``ase._4.optimize.lbfgs.LBFGSMethod``)."""

    x: np.ndarray
    iteration: int = 0
    nsteps: int = 0
    s: list = field(default_factory=list)
    y: list = field(default_factory=list)
    rho: list = field(default_factory=list)
    r0: np.ndarray | None = None
    g0: np.ndarray | None = None
    converged: bool = False
    done: bool = False
    error: str | None = None

    def step(self, gradient: np.ndarray, maxstep: float, memory: int, alpha: float, damping: float) -> None:
        """One L-BFGS step from the gradient (= -forces, flat) at ``self.x``."""
        if self.iteration > 0:
            s0, y0 = self.x - self.r0, gradient - self.g0
            self.s.append(s0)
            self.y.append(y0)
            self.rho.append(1.0 / np.dot(y0, s0))
            if self.iteration > memory:
                self.s.pop(0)
                self.y.pop(0)
                self.rho.pop(0)
        loopmax = min(memory, self.iteration)
        a = np.empty(loopmax)
        q = gradient.copy()
        for i in range(loopmax - 1, -1, -1):
            a[i] = self.rho[i] * np.dot(self.s[i], q)
            q -= a[i] * self.y[i]
        z = q / alpha
        for i in range(loopmax):
            b = self.rho[i] * np.dot(self.y[i], z)
            z += self.s[i] * (a[i] - b)
        self.iteration += 1
        dr = -z.reshape(-1, 3)
        longest = np.linalg.norm(dr, axis=1).max()
        if longest >= maxstep:
            dr *= maxstep / longest
        self.r0, self.g0 = self.x, gradient
        self.x = self.x + damping * dr.reshape(-1)
        self.nsteps += 1


@dataclass
class Relaxed:
    """Outcome of one structure: final positions ``[n, 3]`` (None on error), optimizer steps,
    whether max |F| < fmax was reached, the final energy (eV) and an error message."""

    positions: np.ndarray | None
    steps: int
    converged: bool
    energy: float | None = None
    error: str | None = None


def batched_lbfgs(evaluate, structures, fmax: float = 0.005, max_steps: int = 1000, maxstep: float = MAXSTEP,
                  memory: int = MEMORY, alpha: float = ALPHA, damping: float = DAMPING,
                  progress: bool = False, desc: str = "L-BFGS") -> list[Relaxed]:
    """Relax many structures with ASE's L-BFGS, evaluating all running ones in one call per step.

    Args:
        evaluate: ``evaluate([(numbers, positions), ...]) -> (energies, forces)``; energies ``[m]``
            eV, forces a list of ``[n_i, 3]`` eV/Å (e.g. ``ForceField.evaluate``).
        structures: ``(numbers, positions)`` pairs or ``ase.Atoms``.
        fmax: convergence threshold on the largest per-atom force norm (eV/Å).
        max_steps: optimizer steps at most (ASE's ``steps``).

    Returns:
        one :class:`Relaxed` per structure, in input order.
    """
    if fmax <= 0 or max_steps < 0:
        raise ValueError(f"need fmax > 0 and max_steps >= 0 (got {fmax}, {max_steps})")
    if maxstep > 1.0:
        raise ValueError(f"maxstep {maxstep} Å is much too large (ASE refuses > 1 Å)")
    items = [(a.get_atomic_numbers(), a.get_positions()) if hasattr(a, "get_positions") else a for a in structures]
    numbers = [np.asarray(z) for z, _ in items]
    states = [LBFGSState(np.asarray(x, np.float64).reshape(-1).copy()) for _, x in items]
    energies: list[float | None] = [None] * len(states)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(states), desc=desc, unit="structure", file=sys.stderr, leave=False)
    while True:
        running = [k for k, st in enumerate(states) if not st.done]
        if not running:
            break
        e, f = evaluate([(numbers[k], states[k].x.reshape(-1, 3)) for k in running])
        for k, ek, fk in zip(running, e, f):
            st = states[k]
            fk = np.asarray(fk, np.float64)
            if not (np.isfinite(fk).all() and np.isfinite(ek)):
                st.done, st.error = True, f"non-finite energy or forces after {st.nsteps} steps"
            elif np.linalg.norm(fk, axis=1).max() < fmax:
                st.done = st.converged = True
            elif st.nsteps >= max_steps:
                st.done = True
            else:
                st.step(-fk.reshape(-1), maxstep, memory, alpha, damping)
            energies[k] = float(ek)
            if st.done and bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return [Relaxed(None if st.error else st.x.reshape(-1, 3).copy(), st.nsteps, st.converged,
                    None if st.error else energies[k], st.error) for k, st in enumerate(states)]

