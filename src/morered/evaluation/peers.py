"""ML force fields as relaxation methods: the PaiNN force fields trained here and pretrained peers.

Every method is ``relax_<name>(numbers, positions, ref_positions, max_steps, fmax) ->
BaselineResult`` like the GFN2-xTB baseline, and uses ASE's L-BFGS with the same ``max_steps`` and
force threshold ``fmax`` (eV/Å) as GFN2-xTB, one structure at a time on the calling thread.

The benchmark relaxes the batchable ones (``BATCHED``: the PaiNN force fields and ANI) with
:func:`relax_batched` instead: the same L-BFGS steps per structure
(:func:`morered.forcefield.optimize.batched_lbfgs`), all running structures evaluated in one call,
as MoreRed relaxes a batch; :data:`OPTIMIZERS` names what each row used.

- ``mlff`` / ``mlff-dens``: the PaiNN force fields shipped in ``morered/models`` (GFN2-xTB labels).
- ``ani1x``: ANI-1x (ωB97X/6-31G(d)); ``ani1ccx``: ANI-1ccx (CCSD(T)*/CBS transfer learning);
  both from ``torchani==2.0`` (weights inside the wheel; needs ``setuptools<81``), elements H C N O.
- ``so3lr``: SO3LR (``so3krates-torch``; PBE0+MBD level of its training data, with long-range
  electrostatics and dispersion), float64.

A missing package makes :func:`peer_available` say why (the benchmark lists the method as skipped);
an element a model does not support, or any error on one structure, gives that structure a
failed result, never a crash.
"""

from __future__ import annotations

import time
from functools import lru_cache

import numpy as np

from morered.evaluation.baselines import BaselineResult

#: elements each pretrained model was trained on (None: let the model decide)
ELEMENTS = {"ani1x": {1, 6, 7, 8}, "ani1ccx": {1, 6, 7, 8}, "so3lr": None, "mlff": None, "mlff-dens": None}
PEERS = tuple(ELEMENTS)
#: peers the benchmark relaxes in batches (one energy/force call per L-BFGS iteration for all)
BATCHED = ("mlff", "mlff-dens", "ani1x", "ani1ccx")
#: the optimizer each method's benchmark rows use
OPTIMIZERS = {m: ("L-BFGS (ASE's steps), batched evaluation" if m in BATCHED else "ASE L-BFGS, per structure")
              for m in ELEMENTS}


@lru_cache(maxsize=None)
def ani_model(method: str = "ani1x"):
    """The torchani 2.0 model (float64, atomic numbers as species, energies in Hartree), loaded once.

    Raises:
        ImportError naming the ``peers`` extra if torchani is not installed.
    """
    import warnings

    if method not in ("ani1x", "ani1ccx"):
        raise ValueError(f"unknown ANI model {method!r}; choose ani1x or ani1ccx")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchani 2.0 imports the deprecated pkg_resources
            import torchani
    except ImportError as e:
        raise ImportError(f"{method} needs torchani 2.0: pip install -e .[peers] ({e})") from e
    model = torchani.models.ANI1x if method == "ani1x" else torchani.models.ANI1ccx
    return model(periodic_table_index=True).double()


@lru_cache(maxsize=None)
def _calculator(method: str):
    if method in ("ani1x", "ani1ccx"):
        return ani_model(method).ase()
    if method == "so3lr":
        import contextlib
        import io

        from so3krates_torch.calculator.so3 import SO3LRCalculator

        with contextlib.redirect_stdout(io.StringIO()):  # it prints a dtype note
            return SO3LRCalculator(default_dtype="float64")
    if method in ("mlff", "mlff-dens"):
        from morered.forcefield.calculator import ForceField

        return ForceField(method)
    raise ValueError(f"unknown peer {method!r}; choose from {PEERS}")


def peer_available(method: str) -> tuple[bool, str]:
    """Whether a peer's package (and, for ``mlff*``, the shipped model) is there: ``(ok, why not)``."""
    try:
        if method in ("ani1x", "ani1ccx"):
            import importlib.util

            if importlib.util.find_spec("torchani") is None:
                return False, f"{method}: torchani is not installed (pip install -e .[peers])"
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                import torchani  # noqa: F401  (fails without pkg_resources, i.e. setuptools >= 81)
            return True, ""
        if method == "so3lr":
            from so3krates_torch.calculator.so3 import SO3LRCalculator  # noqa: F401

            return True, ""
        if method in ("mlff", "mlff-dens"):
            from importlib import resources

            from morered.forcefield.calculator import SHIPPED

            if not resources.files("morered.models").joinpath(SHIPPED[method]).is_file():
                return False, f"{method}: no shipped force-field model in this installation"
            return True, ""
    except ImportError as e:
        return False, f"{method}: {e} (pip install -e .[peers])"
    return False, f"unknown peer {method!r}; choose from {PEERS}"


def unsupported(method: str, numbers) -> str | None:
    """Why ``method`` cannot take a structure with these atomic numbers (elements outside its
    training set), or None."""
    allowed = ELEMENTS.get(method)
    bad = sorted(set(int(z) for z in numbers) - allowed) if allowed is not None else []
    return f"{method} does not support elements {bad}" if bad else None


def relax_peer(method: str, numbers, positions, ref_positions=None, max_steps: int = 1000, fmax: float = 0.005,
               **opts) -> BaselineResult:
    """L-BFGS with the method's calculator until max |F| < ``fmax`` eV/Å or ``max_steps``."""
    t0 = time.perf_counter()
    try:
        from ase import Atoms
        from ase.optimize import LBFGS

        why = unsupported(method, numbers)
        if why:
            raise ValueError(why)
        atoms = Atoms(numbers=np.asarray(numbers, int), positions=np.asarray(positions, np.float64))
        atoms.calc = _calculator(method)
        opt = LBFGS(atoms, logfile=None)
        converged = bool(opt.run(fmax=fmax, steps=int(max_steps)))
        x = atoms.get_positions()
        if not np.isfinite(x).all():
            raise FloatingPointError(f"{method} relaxation produced non-finite positions")
        return BaselineResult(x, int(opt.nsteps), converged, time.perf_counter() - t0)
    except Exception as e:  # unsupported elements, model errors: a reported failure for this structure
        return BaselineResult(None, 0, False, time.perf_counter() - t0, f"{type(e).__name__}: {e}")


def batched_evaluate(method: str):
    """``evaluate([(numbers, positions), ...]) -> (energies eV, [forces eV/Å])`` of a batchable peer.

    The PaiNN force fields in float32 (forces are all L-BFGS uses; float32 is 2-3x faster on a CPU
    and its force noise, ~1e-5 eV/Å, is far below any fmax used here); ANI in float64.
    """
    import torch

    if method in ("mlff", "mlff-dens"):
        from morered.forcefield.calculator import ForceField

        calc = ForceField(method, dtype=torch.float32)
        return lambda part: calc.evaluate(part, batch_size=128)
    if method in ("ani1x", "ani1ccx"):
        from ase.units import Hartree

        from morered.evaluation.energies import ani_input

        net = ani_model(method)

        def evaluate(part):
            species, coords = ani_input([z for z, _ in part], [x for _, x in part])
            coords.requires_grad_(True)
            e = net((species, coords)).energies
            (g,) = torch.autograd.grad(e.sum(), coords)
            f = (-g * Hartree).numpy()
            return e.detach().numpy() * Hartree, [f[i, :len(z)] for i, (z, _) in enumerate(part)]

        return evaluate
    raise ValueError(f"{method!r} is not a batched peer; choose from {BATCHED}")


def relax_batched(method: str, numbers_list, positions_list, max_steps: int = 1000, fmax: float = 0.005,
                  progress: bool = False) -> list[BaselineResult]:
    """Relax many structures with a batchable peer: ASE's L-BFGS steps per structure, one batched
    evaluation per iteration (:func:`morered.forcefield.optimize.batched_lbfgs`). A structure with
    an element the model does not support, or non-finite forces, is a failed result; the rest go on.
    ``seconds`` of every result is the batch's wall time shared equally."""
    from morered.forcefield.optimize import batched_lbfgs

    t0 = time.perf_counter()
    results: list[BaselineResult | None] = [None] * len(numbers_list)
    run = []
    for k, z in enumerate(numbers_list):
        why = unsupported(method, z)
        if why:
            results[k] = BaselineResult(None, 0, False, 0.0, f"ValueError: {why}")
        else:
            run.append(k)
    if run:
        out = batched_lbfgs(batched_evaluate(method), [(numbers_list[k], positions_list[k]) for k in run],
                            fmax=fmax, max_steps=max_steps, progress=progress, desc=method)
        for k, o in zip(run, out):
            results[k] = BaselineResult(o.positions, o.steps, o.converged, 0.0,
                                        None if o.error is None else f"FloatingPointError: {o.error}")
    share = (time.perf_counter() - t0) / max(len(numbers_list), 1)
    for r in results:
        r.seconds = share
    return results


def peer_function(method: str):
    """``relax(numbers, positions, ref_positions, max_steps, **opts)`` for one peer."""

    def relax(numbers, positions, ref_positions=None, max_steps: int = 1000, **opts):
        return relax_peer(method, numbers, positions, ref_positions, max_steps, **opts)

    relax.__name__ = f"relax_{method.replace('-', '_')}"
    return relax


RELAX = {m: peer_function(m) for m in PEERS}
