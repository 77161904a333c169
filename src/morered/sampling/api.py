"""Python API: relax ASE ``Atoms`` (or RDKit molecules) with MoreRed, score their distance from
equilibrium, and an ASE-optimizer-like class."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from ase import Atoms

from morered.errors import ModelError, OptionError, StructureError
from morered.sampling.models import LoadedModel, default_model, load_model, pair
from morered.sampling.samplers import (DEFAULT_PATIENCE, DEFAULT_T_CONV, DEFAULT_T_EQ, SAMPLERS, SamplerOptions,
                                      predict_steps)

VARIANTS = ("jt", "as", "itp", "ddpm")


@dataclass
class RelaxResult:
    """Result of relaxing one structure.

    Attributes:
        positions: relaxed positions ``[n, 3]`` (Å), same atom order and centre as the input; None
            when the structure was rejected (see ``error``).
        t0: predicted diffusion step of the input (for ``ddpm``: the given start step).
        steps: reverse steps taken.
        converged: the model judged the result at equilibrium: AS/JT: the predicted step fell to
            ``t_conv`` (or the input scored <= ``t_eq``); ITP/DDPM: the schedule reached 0.
        stop: why it stopped: ``converged``, ``plateau`` (AS/JT: no new lowest predicted step for
            ``patience`` steps), ``at_equilibrium`` (AS/JT: the input scored <= ``t_eq``),
            ``max_steps``, ``error``; "" for a rejected input.
        t_final: last predicted step (AS/JT) or the step reached (ITP/DDPM).
        trajectory_t: the step used at every iteration (always recorded, it is cheap).
        trajectory: positions after every step (``[n, 3]`` arrays, input first) when requested.
        error: why the structure was not relaxed, else None.
    """

    positions: np.ndarray | None
    t0: int = -1
    steps: int = 0
    converged: bool = False
    t_final: int = -1
    trajectory_t: list[int] | None = None
    trajectory: list[np.ndarray] | None = field(default=None, repr=False)
    error: str | None = None
    stop: str | None = None  # why it stopped (``Relaxed.stop``); None for a rejected input

    def frame_steps(self) -> list[int]:
        """The predicted (AS/JT) or scheduled (ITP/DDPM) step of each trajectory frame: frame k
        (k = 0 is the input) is labelled with the step used at iteration k; the last frame, which
        no iteration followed, with ``t_final``."""
        n = len(self.trajectory or [])
        ts = list(self.trajectory_t or [])[:n]
        return ts + [self.t_final] * (n - len(ts))

    def atoms(self, like: Atoms) -> Atoms:
        """A copy of ``like`` with the relaxed positions."""
        a = like.copy()
        a.positions = self.positions
        return a


def check_device(device) -> str:
    """``device`` if torch can use it on this machine, else :class:`OptionError` saying why
    (unknown name, no CUDA, index out of range)."""
    import torch

    try:
        dev = torch.device(device)
    except Exception:
        raise OptionError(f"--device {device!r}: not a device (use cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cpu":
        return str(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise OptionError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise OptionError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s) here")
        return str(device)
    if dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise OptionError(f"--device {device}: MPS is not available on this machine")
        return str(device)
    raise OptionError(f"--device {device}: unsupported device type {dev.type!r} (use cpu, cuda or mps)")


def check_relax_options(*, variant: str = "jt", max_steps: int = 1000, t_conv: int = DEFAULT_T_CONV,
                        patience: int = DEFAULT_PATIENCE, t_eq: int = DEFAULT_T_EQ, t_start: int | None = None,
                        final_step: str | None = None, batch_size: int = 128, T: int | None = None,
                        max_atoms: int | None = None, tail_t: int | None = None, tail_steps: int | None = None,
                        jump: float | None = None, eq_tail_t: int | None = None,
                        tail_scale: float | None = None, tail_t_max: int | None = None,
                        stochastic: bool = False) -> None:
    """:class:`OptionError` naming the first option out of range (before any work)."""
    if variant not in VARIANTS:
        raise OptionError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if stochastic and variant in ("jt", "as") and jump is not None and float(jump) > 0:
        raise OptionError("--stochastic adds DDPM's posterior noise to reverse steps; --jump replaces them by "
                          "deterministic DDIM jumps: give one or the other (--stochastic alone turns the jumps off)")
    checks = [("batch_size", batch_size, 1), ("max_steps", max_steps, 0), ("patience", patience, 0),
              ("t_eq", t_eq, -1), ("t_conv", t_conv, 0)]
    for name, value, lo in checks:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < lo:
            raise OptionError(f"--{name.replace('_', '-')} must be an integer >= {lo}, not {value!r}")
    for name, value in (("tail_t", tail_t), ("tail_steps", tail_steps), ("eq_tail_t", eq_tail_t),
                        ("tail_t_max", tail_t_max)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0):
            raise OptionError(f"--{name.replace('_', '-')} must be an integer >= 0, not {value!r}")
    if tail_scale is not None and not (isinstance(tail_scale, (int, float)) and not isinstance(tail_scale, bool)
                                       and 0.0 <= float(tail_scale) <= 10.0):
        raise OptionError(f"--tail-scale must be a number in [0, 10], not {tail_scale!r}")
    if jump is not None and not (isinstance(jump, (int, float)) and 0.0 <= float(jump) < 1.0):
        raise OptionError(f"--jump must be in [0, 1), not {jump!r}")
    if max_atoms is not None and (not isinstance(max_atoms, (int, np.integer)) or max_atoms < 2):
        raise OptionError(f"--max-atoms must be an integer >= 2, not {max_atoms!r}")
    if T is not None and t_conv > T:
        raise OptionError(f"--t-conv must be in 0..{T}, not {t_conv}")
    if variant == "ddpm":
        if t_start is None:
            raise OptionError("--variant ddpm needs --t-start (the diffusion step the inputs are at)")
        if not isinstance(t_start, (int, np.integer)) or not 0 <= t_start <= (T if T is not None else 10**9):
            raise OptionError(f"--t-start must be in 0..{T}, not {t_start!r}")
    if final_step is not None and final_step not in ("mean", "x0"):
        raise OptionError(f"final_step must be 'mean' or 'x0', not {final_step!r}")


def model_limits(lm: LoadedModel, max_atoms: int | None = None) -> dict:
    """What :func:`morered.io.validate` checks for this model: elements, the largest structure
    (twice the largest training molecule), the largest interatomic distance (twice the largest
    seen in training; for models that do not store it, QM9's 12.04 Å scaled with the cube root of
    the molecule size) and the largest gap between groups of atoms (the network's cutoff)."""
    from morered.io import QM9_MAX_DISTANCE

    d = lm.max_distance
    if d is None:
        d = QM9_MAX_DISTANCE * max(1.0, lm.max_atoms / 29) ** (1 / 3)
    cutoffs = [float(m.cutoff) for m in lm.model.modules()
               if isinstance(getattr(m, "cutoff", None), (int, float)) and m.cutoff > 0]
    return {"elements": lm.elements, "max_atoms": max_atoms if max_atoms is not None else 2 * lm.max_atoms,
            "max_extent": 2 * d, "max_gap": min(cutoffs) if cutoffs else None}


def resolve_model(model, variant: str, device="cpu", time_model=None) -> LoadedModel:
    """``model`` may be None (the shipped model for the variant), a path/name, or a LoadedModel;
    ``time_model`` pairs a separate time predictor with a noise model (AS / ITP).

    Raises:
        OptionError: unknown variant or unusable device; ModelError: a model that cannot be
        loaded (missing, not a model file, pickled, incomplete) or does not fit the variant.
    """
    if variant not in VARIANTS:
        raise OptionError(f"variant must be one of {VARIANTS}, not {variant!r}")
    check_device(device)
    if isinstance(model, LoadedModel):
        lm = model
        lm.model.to(device)
    elif model is None:
        lm = default_model(variant, device)
    else:
        lm = load_model(model, device)
    if time_model is not None:
        tm = time_model if isinstance(time_model, LoadedModel) else load_model(time_model, device)
        tm.model.to(device)
        lm = pair(lm, tm)
    if not lm.has_noise:
        raise ModelError(f"{lm.source} is a time-only model: relaxation needs a noise model")
    if variant in ("jt", "as", "itp") and not lm.has_time:
        raise ModelError(f"variant {variant!r} needs a time predictor; {lm.source} has none "
                         "(pass time_model=..., or use variant='ddpm' with t_start)")
    if variant == "as" and lm.model_type == "jt":
        raise ModelError(f"AS needs separate time and noise networks; {lm.source} is a JT model "
                         "(use variant='jt', or pass time_model=...)")
    return lm


def _as_atoms(x) -> Atoms:
    if isinstance(x, Atoms):
        return x
    try:
        from rdkit import Chem
    except ImportError:  # pragma: no cover
        Chem = None
    if Chem is not None and isinstance(x, Chem.Mol):
        from morered.io import atoms_from_mol

        try:
            return atoms_from_mol(x)
        except ValueError as err:
            raise StructureError(x.GetProp("_Name") if x.HasProp("_Name") else "molecule", str(err)) from None
    raise TypeError(f"expected ase.Atoms or rdkit Mol, got {type(x).__name__}")


def relax(
    structures: Atoms | Sequence[Atoms],
    model=None,
    variant: str = "jt",
    *,
    time_model=None,
    max_steps: int = 1000,
    t_conv: int = DEFAULT_T_CONV,
    patience: int = DEFAULT_PATIENCE,
    t_eq: int = DEFAULT_T_EQ,
    t_start: int | None = None,
    stochastic: bool = False,
    final_step: str | None = None,
    tail_t: int | None = None,
    tail_steps: int | None = None,
    jump: float | None = None,
    eq_tail_t: int | None = None,
    tail_scale: float | None = None,
    tail_t_max: int | None = None,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    trajectory: bool = False,
    min_distance: float | None = None,
    max_atoms: int | None = None,
    progress: bool | Callable = False,
) -> list[RelaxResult]:
    """Relax structures by reverse diffusion from their predicted diffusion step.

    Args:
        structures: one ``ase.Atoms`` (or RDKit ``Mol``) or a list of them.
        model: None for the shipped model of ``variant``, a path to a ``.pt``/``.ckpt``, a shipped
            name, or a :class:`LoadedModel`.
        variant: ``jt`` (default), ``as``, ``itp`` or ``ddpm`` (needs ``t_start``).
        time_model: a separate time predictor to pair with a noise-only ``model``.
        max_steps: most reverse steps per structure.
        t_conv: AS/JT stop once the predicted step is <= t_conv.
        patience: AS/JT also stop when the predicted step has not reached a new minimum for this
            many steps (0: off).
        t_eq: AS/JT return an input whose first predicted step is <= t_eq after one mean step
            (-1: off).
        stochastic: add the posterior noise at every step (off: deterministic mean steps).  For
            AS/JT this turns the adaptive DDIM jumps off (they are deterministic; giving both
            ``stochastic`` and ``jump`` > 0 is refused); the end-of-relaxation tail stays deterministic.
        final_step: AS/JT, on convergence: ``mean`` (one last reverse step) or ``x0`` (jump to the
            clean structure implied by the last noise prediction); default: SamplerOptions'.
        tail_t, tail_steps, jump, eq_tail_t: AS/JT end-of-relaxation tail, adaptive DDIM jumps and
            the tail of inputs already at equilibrium (see
            :class:`~morered.sampling.samplers.SamplerOptions`; default: its defaults).
        tail_scale, tail_t_max: AS/JT, a tail start per molecule from its first predicted step,
            ``clamp(round(tail_scale * t0), tail_t, tail_t_max)`` (default 0: the fixed ``tail_t``).
        batch_size: structures evaluated together; seed: noise seed; device: ``cpu`` / ``cuda``.
        trajectory: also return positions after every step.
        min_distance: atoms closer than this (Å) make a structure invalid (default 0.3).
        max_atoms: largest structure accepted (default: twice the largest training molecule).
        progress: show a tqdm progress bar (True) or call ``progress(n_done)``.
    Returns:
        one :class:`RelaxResult` per input, in input order; rejected inputs carry ``error``.

    Raises:
        OptionError: an option out of range (checked before any work); ModelError: see
        :func:`resolve_model`.
    """
    from morered.io import MIN_DISTANCE, validate

    single = not isinstance(structures, (list, tuple))
    check_relax_options(variant=variant, max_steps=max_steps, t_conv=t_conv, patience=patience, t_eq=t_eq,
                        t_start=t_start, final_step=final_step, batch_size=batch_size, max_atoms=max_atoms,
                        tail_t=tail_t, tail_steps=tail_steps, jump=jump, eq_tail_t=eq_tail_t,
                        tail_scale=tail_scale, tail_t_max=tail_t_max, stochastic=stochastic)
    if stochastic and variant in ("jt", "as"):
        jump = 0.0  # the adaptive DDIM jumps are deterministic: noisy steps need DDPM's reverse step
    atoms_list = [_as_atoms(a) for a in ([structures] if single else structures)]
    lm = resolve_model(model, variant, device, time_model)
    check_relax_options(variant=variant, max_steps=max_steps, t_conv=t_conv, patience=patience, t_eq=t_eq,
                        t_start=t_start, T=lm.schedule.T)
    limits = model_limits(lm, max_atoms)
    results: list[RelaxResult | None] = [None] * len(atoms_list)
    todo = []
    for k, a in enumerate(atoms_list):
        reason = validate(a, **limits, min_distance=MIN_DISTANCE if min_distance is None else min_distance)
        if reason is not None:
            results[k] = RelaxResult(None, error=reason)
        else:
            todo.append(k)
    final_step = SamplerOptions.final_step if final_step is None else final_step
    opts = SamplerOptions(max_steps=max_steps, t_conv=t_conv, t_start=t_start, stochastic=stochastic, final_step=final_step,
                          patience=patience, t_eq=t_eq,
                          batch_size=batch_size, seed=seed, device=device,
                          **{k: v for k, v in (("tail_t", tail_t), ("tail_steps", tail_steps), ("jump", jump),
                                                 ("eq_tail_t", eq_tail_t), ("tail_scale", tail_scale),
                                                 ("tail_t_max", tail_t_max)) if v is not None})
    mols = [(atoms_list[k].numbers, atoms_list[k].positions) for k in todo]
    traj: dict[int, list[np.ndarray]] = {j: [np.array(m[1], dtype=np.float64)] for j, m in enumerate(mols)} if trajectory else {}
    bar = None
    if progress is True:
        from morered.io import progress_bar

        bar = progress_bar(len(mols), f"relax ({variant})", "mol")

    def callback(ev):
        if trajectory:
            for j, x in zip(ev["mol"], ev["positions"]):
                traj[j].append(x)
        if bar is not None:
            bar.update(ev["n_done"])
        elif callable(progress):
            progress(ev["n_done"])

    out = SAMPLERS[variant](lm.model, mols, lm.schedule, opts, callback if (trajectory or progress) else None)
    if bar is not None:
        bar.close()
    for j, (k, r) in enumerate(zip(todo, out)):
        results[k] = RelaxResult(r.positions, r.t0, r.steps, r.converged, r.t_final, r.trajectory_t,
                                 traj.get(j) if trajectory and r.error is None else None, r.error, r.stop)
    return results[0] if single else results  # type: ignore[return-value]


def score(structures: Atoms | Sequence[Atoms], model=None, *, time_model=None, batch_size: int = 256,
          device: str = "cpu", max_atoms: int | None = None) -> np.ndarray:
    """Predicted diffusion step of each structure (0..T), a "distance from equilibrium" score.

    The step t corresponds to Gaussian displacements of standard deviation sqrt(1 - alpha_bar_t)
    per coordinate (t = 50 / 100 / 150 ~ 0.12 / 0.25 / 0.38 Å RMSD for the default schedule).
    Returns a float array of integer steps, NaN for structures that fail validation.

    Raises:
        OptionError: bad batch size or device; ModelError: a model without a time head or one
        that cannot be loaded.
    """
    from morered.io import validate

    single = isinstance(structures, Atoms)
    check_relax_options(batch_size=batch_size, max_atoms=max_atoms)
    atoms_list = [_as_atoms(a) for a in ([structures] if single else structures)]
    lm = load_time_model(time_model if time_model is not None else (model if model is not None else "jt"), device)
    T = lm.schedule.T
    scores = np.full(len(atoms_list), np.nan)
    limits = model_limits(lm, max_atoms)
    ok = [k for k, a in enumerate(atoms_list) if validate(a, **limits) is None]
    steps = predict_steps(lm.model, [(atoms_list[k].numbers, atoms_list[k].positions) for k in ok], T,
                          batch_size, device)
    scores[ok] = np.where(steps.numpy() >= 0, steps.numpy(), np.nan)
    return scores[0] if single else scores


def load_time_model(model, device="cpu") -> LoadedModel:
    """A model that predicts diffusion steps (JT, time-only, or a pair): a shipped name, a path or
    a LoadedModel; ModelError (a ValueError) for a noise-only model."""
    check_device(device)
    lm = model if isinstance(model, LoadedModel) else load_model(model, device)
    if not lm.has_time:
        raise ModelError(f"{lm.source} has no time head: scoring needs a time predictor")
    return lm


class MoreRedOptimizer:
    """Relax one ``ase.Atoms`` in place, used like an ASE optimizer::

        opt = MoreRedOptimizer(atoms, trajectory="relax.traj")
        converged = opt.run(steps=1000)

    Each reverse-diffusion step is one optimizer step; ``trajectory`` (an ASE ``.traj`` or
    ``.extxyz`` path) receives every intermediate geometry with its predicted step in
    ``atoms.info["t_hat"]``.  Keyword arguments go to :func:`relax` (``model``, ``variant``,
    ``t_conv``, ``device``, ...).
    """

    def __init__(self, atoms: Atoms, model=None, variant: str = "jt", trajectory: str | Path | None = None,
                 logfile: str | None = None, **relax_kwargs):
        self.atoms = atoms
        self.model = resolve_model(model, variant, relax_kwargs.get("device", "cpu"), relax_kwargs.pop("time_model", None))
        self.variant, self.trajectory, self.logfile = variant, trajectory, logfile
        self.kwargs = relax_kwargs
        self.result: RelaxResult | None = None
        self.nsteps = 0

    def run(self, steps: int = 1000) -> bool:
        """Relax for at most ``steps`` reverse steps; returns whether it converged.

        Raises:
            StructureError: the model cannot handle the structure (checked before anything
                changes: ``atoms`` and the trajectory file are left as they were).
        """
        from morered.io import MIN_DISTANCE, validate

        reason = validate(self.atoms, **model_limits(self.model, self.kwargs.get("max_atoms")),
                          min_distance=self.kwargs.get("min_distance") or MIN_DISTANCE)
        if reason is not None:
            raise StructureError(self.atoms.get_chemical_formula() or "empty structure", f"cannot relax: {reason}")
        r = relax(self.atoms, self.model, self.variant, max_steps=steps, trajectory=self.trajectory is not None,
                  **self.kwargs)
        if r.error is not None:
            raise StructureError(self.atoms.get_chemical_formula(), f"cannot relax: {r.error}")
        self.result, self.nsteps = r, r.steps
        if self.trajectory is not None:
            import ase.io

            frames = []
            for k, (x, t) in enumerate(zip(r.trajectory or [], r.frame_steps())):
                a = self.atoms.copy()
                a.positions = x
                a.info.update({"step": k, "t_hat": int(t)})
                frames.append(a)
            from morered.io import atomic_write

            with atomic_write(self.trajectory) as tmp:
                ase.io.write(str(tmp), frames, format=ase.io.formats.filetype(str(self.trajectory), read=False))
        self.atoms.positions = r.positions
        if self.logfile is not None:
            import sys

            msg = (f"MoreRed-{self.variant.upper()}: {r.steps} steps, t0 = {r.t0}, t_final = {r.t_final}, "
                   f"converged = {r.converged}\n")
            if self.logfile == "-":
                sys.stdout.write(msg)
            else:
                with open(self.logfile, "a") as f:
                    f.write(msg)
        return r.converged

    def converged(self) -> bool:
        return bool(self.result is not None and self.result.converged)
