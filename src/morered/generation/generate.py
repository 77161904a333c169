"""New molecules from pure noise: compositions -> centred Gaussian x_T -> reverse diffusion.

``jt`` / ``as`` run MoreRed's adaptive schedule (the step re-predicted from the structure before
every reverse step, SPEC §6); ``ddpm`` runs the fixed schedule T, T-1, ..., 1 (Ho et al. 2020).
Updates are stochastic (DDPM's sampler: the posterior noise sigma_t z at every step, none on the
last).  Generation has its own stopping rule (:func:`generation_options`): the relaxation
defaults (patience, t_eq) were chosen for inputs near equilibrium and are not inherited.  An
adaptive run the time head has not brought to t_conv within ``max_steps`` is run again from fresh
noise, at most ``retries`` times (GENERATION_RETRIES; the model's verdict, no validity checker).

Then, by default (``relax=True``), each generated structure is *relaxed* with MoreRed's default
relaxation rule (:func:`morered.sampling.api.relax`): the same networks for ``jt`` / ``as``, the
shipped JT model for ``ddpm`` (which has no time predictor).  A run from noise ends with small
bond-length errors that the bond-order checkers are sensitive to; the relaxation's deterministic
tail removes them in 30-70 steps (chosen by measurement: README "Generate molecules").  The
unrelaxed structure stays in :attr:`Generated.unrelaxed`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols

from morered.errors import InputError, ModelError, OptionError
from morered.sampling.samplers import SamplerOptions, adaptive, ddpm

VARIANTS = ("jt", "as", "ddpm")

#: Stopping rule of the adaptive schedule in generation, chosen by measurement
#: (benchmarks/generation_stopping.py, README "Generate molecules"): stop when the predicted step
#: is <= 10 (noise of ~0.01 Å left; the time head hovers at 1-20 for hundreds of steps before it
#: says 0, if ever) or after ``max_steps``; no patience and no t_eq (see generation_options).
GENERATION_T_CONV = 10
GENERATION_PATIENCE = 0
GENERATION_T_EQ = -1
#: most reverse steps of the adaptive schedule: the shipped JT model's time head lags behind the
#: true noise level at large t, so a run from noise needs more than T iterations (24 validation
#: compositions: 29 % valid with 1000, 71 % with 2000)
GENERATION_MAX_STEPS = 2000
#: a run whose predicted step has not reached a new minimum for 200 steps (it hovers in a strained
#: structure, typically at t ~ 40) is re-noised to t = 300 and goes on adaptively, at most twice
#: (SamplerOptions.restart_*; the steps count against max_steps).  Chosen on validation (shipped JT
#: stage 10, 256 validation compositions, valid % after the final relaxation, seed 0 / 1): 80.9 /
#: 86.3 without, 85.5 / 88.3 with, in as many steps (README "Generate molecules")
GENERATION_RESTART_PATIENCE = 200
GENERATION_RESTART_T = 300
GENERATION_MAX_RESTARTS = 2
#: an adaptive run that the time head has not brought to t_conv within max_steps is run again from
#: fresh noise, at most this many times (the model's own judgement: no checker is consulted).
#: Chosen on validation (shipped JT stage 10, 500 validation compositions, seed 0, paired on the same
#: first runs; benchmarks/retry_unconverged.py): valid after the final relaxation 87.4 % with none,
#: 92.0 / 93.8 / 93.6 % with at most 1 / 2 / 3 retries, for 1.29 / 1.40 / 1.44 runs per molecule
#: (README "Generate molecules")
GENERATION_RETRIES = 2

_TOKEN = re.compile(r"([A-Z][a-z]?)(\d*)")


def parse_composition(text: str, elements: set[int] | None = None, max_atoms: int | None = None) -> np.ndarray:
    """Atomic numbers of a sum formula such as ``C7H10O2`` (heavy atoms in formula order, then H).

    Args:
        text: the formula; an element may appear more than once (``CH3CH2OH``).
        elements: atomic numbers the model knows; others are refused.
        max_atoms: the largest molecule accepted.

    Raises:
        OptionError: unparsable text, unknown element, a zero count, fewer than 2 atoms or more
            than ``max_atoms``.
    """
    s = text.strip()
    if not s or _TOKEN.sub("", s):
        raise OptionError(f"composition {text!r}: not a sum formula like C7H10O2")
    counts: dict[int, int] = {}
    for sym, num in _TOKEN.findall(s):
        if sym not in atomic_numbers or sym == "X":
            raise OptionError(f"composition {text!r}: unknown element {sym!r}")
        z = atomic_numbers[sym]
        if elements is not None and z not in elements:
            known = " ".join(chemical_symbols[e] for e in sorted(elements))
            raise OptionError(f"composition {text!r}: the model was not trained on {sym} (it knows {known})")
        k = int(num) if num else 1
        if k == 0:
            raise OptionError(f"composition {text!r}: {sym}0 (a count must be at least 1)")
        counts[z] = counts.get(z, 0) + k
    n = sum(counts.values())
    if n < 2:
        raise OptionError(f"composition {text!r}: {n} atom; at least 2 are needed")
    if max_atoms is not None and n > max_atoms:
        raise OptionError(f"composition {text!r}: {n} atoms; the model accepts at most {max_atoms} "
                          "(the largest molecule it was trained on)")
    order = sorted(counts, key=lambda z: (z == 1, list(counts).index(z)))
    return np.concatenate([np.full(counts[z], z, dtype=np.int64) for z in order])


def formula(numbers: Sequence[int]) -> str:
    """Hill formula (C, H, then alphabetical), e.g. ``C7H10O2``."""
    from ase.formula import Formula

    return Formula.from_list([chemical_symbols[int(z)] for z in numbers]).format("hill")


def compositions_from_test(n: int, seed: int = 0) -> list[np.ndarray]:
    """Compositions of ``n`` molecules drawn with ``seed`` from the QM9 test split of the shipped
    split (the paper's protocol); without replacement while ``n`` <= the split's size."""
    if n < 1:
        raise OptionError(f"--from-test {n}: need at least 1 composition")
    return split_compositions(n, seed, "test")[1]


def split_compositions(n: int, seed: int = 0, split: str = "test") -> tuple[np.ndarray, list[np.ndarray]]:
    """``(QM9 ids, compositions)`` of ``n`` molecules drawn with ``seed`` from one split of the
    shipped split file (``test`` for reported numbers, ``val`` for choosing); without replacement
    while ``n`` <= the split's size.  The same draw for the same ``(n, seed, split)`` everywhere."""
    from morered.data.qm9 import load_qm9, split_ids

    qm9 = load_qm9()
    pool = split_ids(qm9)[split]
    ids = np.random.default_rng(seed).choice(pool, size=n, replace=n > len(pool))
    where = {int(i): k for k, i in enumerate(qm9.ids)}
    return ids, [np.asarray(qm9.molecule(where[int(i)])[1], dtype=np.int64) for i in ids]


def compositions_from_file(path: str | Path) -> list[np.ndarray]:
    """Compositions (atomic numbers) of the readable structures of any file ``io`` reads."""
    from morered.io import read_structures

    recs = [r for r in read_structures(path) if r.atoms is not None]
    if not recs:
        raise InputError(f"{path}: no structures")
    return [np.asarray(r.atoms.numbers, dtype=np.int64) for r in recs]


def check_compositions(numbers_list: Sequence[np.ndarray], elements: set[int], max_atoms: int) -> None:
    """OptionError naming the first composition the model cannot generate."""
    for k, z in enumerate(numbers_list):
        f = formula(z) if len(z) else "(empty)"
        unknown = sorted(set(int(e) for e in z) - set(elements))
        if unknown:
            raise OptionError(f"composition {k} ({f}): elements the model was not trained on: "
                              + " ".join(chemical_symbols[e] for e in unknown))
        if not 2 <= len(z) <= max_atoms:
            raise OptionError(f"composition {k} ({f}): {len(z)} atoms; need 2..{max_atoms}")


def initial_noise(numbers_list: Sequence[np.ndarray], seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """x_T ~ N(0, I) projected to zero centre, one generator per molecule seeded from
    ``(seed, index)``: the same seed gives the same start for every variant and batch size."""
    out = []
    for k, z in enumerate(numbers_list):
        g = torch.Generator().manual_seed(int(np.random.SeedSequence([int(seed), k]).generate_state(1)[0]))
        x = torch.randn((len(z), 3), generator=g, dtype=torch.float64)
        out.append((np.asarray(z, dtype=np.int64), (x - x.mean(0)).numpy()))
    return out


def retry_seed(seed: int, retry: int) -> int:
    """The seed of the ``retry``-th fresh-noise run of an unconverged generation (x_T and sampler
    noise), derived from the user's ``seed``: reproducible, and different from every attempt's."""
    return int(np.random.SeedSequence([int(seed), 104729, int(retry)]).generate_state(1)[0] % (2**31))


def generation_options(variant: str, T: int, max_steps: int = GENERATION_MAX_STEPS, batch_size: int = 128,
                       seed: int = 0, device="cpu") -> SamplerOptions:
    """The sampler options of generation, built here (never copied from relaxation's):

    - stochastic updates (DDPM's sampler);
    - adaptive (``jt``/``as``): stop when the predicted step is <= GENERATION_T_CONV (then one last
      mean step) or after ``max_steps``; patience off (a run from noise can plateau at high t for a while and
      would be cut off half-made) and t_eq off (x_T is never at equilibrium); a run that hovers is
      re-noised instead (GENERATION_RESTART_*; ``restart_patience=0`` in ``overrides`` turns it off);
    - ``ddpm``: the fixed schedule from T, all T steps (``max_steps`` does not shorten it).
    """
    if variant not in VARIANTS:
        raise OptionError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if max_steps < 1:
        raise OptionError(f"--max-steps {max_steps}: must be at least 1")
    if batch_size < 1:
        raise OptionError(f"--batch-size {batch_size}: must be at least 1")
    if variant == "ddpm":
        return SamplerOptions(max_steps=T, t_start=T, stochastic=True, batch_size=batch_size, seed=seed,
                              device=device, patience=0, t_eq=-1, tail_t=0, tail_steps=0, jump=0.0,
                              eq_tail_t=0)
    # relaxation's tail and DDIM jumps are not inherited either (measured for relaxation only)
    return SamplerOptions(max_steps=max_steps, t_conv=GENERATION_T_CONV, patience=GENERATION_PATIENCE,
                          t_eq=GENERATION_T_EQ, stochastic=True, final_step="mean", batch_size=batch_size,
                          seed=seed, device=device, tail_t=0, tail_steps=0, jump=0.0, eq_tail_t=0,
                          restart_patience=GENERATION_RESTART_PATIENCE, restart_t=GENERATION_RESTART_T,
                          max_restarts=GENERATION_MAX_RESTARTS)


@dataclass
class Generated:
    """One generated structure.

    Attributes:
        numbers: ``[n]`` atomic numbers.
        positions: ``[n, 3]`` Å (centred), None when the model produced non-finite values.
        steps: reverse steps taken.
        converged: adaptive: the predicted step reached t_conv (the model judged the run finished);
            ddpm: the schedule reached 0.
        t_final: last predicted (adaptive) or scheduled (ddpm) step.
        trajectory_t: the step used at every iteration.
        trajectory: positions after every step, x_T first (when requested); with the final
            relaxation its steps follow.
        error: why there is no structure, else None.
        snapshots: positions after given numbers of iterations of the generation (unrelaxed).
        unrelaxed: the structure the reverse diffusion from noise ended with, when it was then
            relaxed (``positions`` is the relaxed one).
        relax_steps: reverse steps of the final relaxation (0: not relaxed).
        relax_error: why the final relaxation was refused (``positions`` is then the unrelaxed
            structure), else None.
        attempts: generations run for this composition (``generate(attempts=K)`` runs another,
            from fresh noise, while the result is not valid, at most K in all).
        retries: fresh-noise runs after a run the time head did not bring to t_conv within
            ``max_steps`` (``generate(retries=R)``); ``steps``, ``trajectory`` and ``t_final`` are the
            last run's, ``snapshots`` the first run's.
        steps_all: reverse steps of every run of this attempt (``steps`` plus the abandoned runs'):
            the cost.
    """

    numbers: np.ndarray
    positions: np.ndarray | None
    steps: int
    converged: bool
    t_final: int
    trajectory_t: list[int] | None = None
    trajectory: list[np.ndarray] | None = field(default=None, repr=False)
    error: str | None = None
    snapshots: dict[int, np.ndarray] | None = field(default=None, repr=False)
    unrelaxed: np.ndarray | None = field(default=None, repr=False)
    relax_steps: int = 0
    relax_error: str | None = None
    attempts: int = 1
    retries: int = 0
    steps_all: int = 0


def generate(
    numbers_list: Sequence[np.ndarray],
    variant: str = "jt",
    model=None,
    *,
    time_model=None,
    max_steps: int = GENERATION_MAX_STEPS,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    trajectory: bool = False,
    progress: bool | Callable = False,
    max_atoms: int | None = None,
    snapshots: Sequence[int] = (),
    overrides: dict | None = None,
    relax: bool = True,
    relax_model=None,
    attempts: int = 1,
    retries: int = GENERATION_RETRIES,
) -> list[Generated]:
    """Generate one molecule per composition from pure noise.

    Args:
        numbers_list: atomic numbers of each molecule to generate.
        variant: ``jt`` (MoreRed-JT), ``as`` (MoreRed-AS: noise model + time model) or ``ddpm``
            (fixed schedule T..1).
        model, time_model: as in :func:`morered.sampling.api.resolve_model` (None: shipped).
        max_steps: most reverse steps of the adaptive schedule.
        seed: one seed for x_T and the sampler's noise: same seed, same batch size -> same output.
        trajectory: keep the positions after every step.
        progress: a tqdm bar (True) or ``progress(n_done)``.
        max_atoms: the largest molecule accepted (default: the largest the model was trained on).
        snapshots: keep the positions after these numbers of iterations (what a run with that
            ``max_steps`` would return, up to the sampler's noise draws) in ``Generated.snapshots``.
        overrides: fields of :class:`SamplerOptions` to change from :func:`generation_options`
            (for measuring other stopping rules, e.g. ``{"patience": 50}``).
        relax: relax every generated structure with MoreRed's default relaxation rule.
        relax_model: the model of that relaxation (default: the generating networks for ``jt`` /
            ``as``, the shipped JT model for ``ddpm``).
        attempts: at most this many generations per composition: a result that is not valid (the
            MoreRed paper's checker, :func:`morered.generation.metrics.check_molecule`) is generated
            again from fresh noise (seeded from ``seed`` and the attempt), until valid or out of
            attempts; ``Generated.attempts`` says how many ran.  1 (default): one generation each,
            the protocol of every published validity number.
        retries: ``jt`` / ``as``: a run the time head has not brought to t_conv within ``max_steps``
            is run again from fresh noise (seeded by :func:`retry_seed`), at most ``retries`` times;
            the last run is kept.  The model's own verdict, no checker: part of generation's
            default rule (GENERATION_RETRIES); 0 turns it off.  ``ddpm`` has no such verdict.
    """
    from morered.sampling.api import resolve_model

    if variant not in VARIANTS:
        raise OptionError(f"variant must be one of {VARIANTS}, not {variant!r}")
    if attempts < 1:
        raise OptionError(f"--attempts {attempts}: must be at least 1")
    if retries < 0:
        raise OptionError(f"--retries {retries}: must be 0 (off) or more")
    try:
        lm = resolve_model(model, variant, device, time_model)
    except (FileNotFoundError, ValueError) as e:
        raise ModelError(str(e)) from e
    check_compositions(numbers_list, lm.elements, max_atoms or lm.max_atoms)
    kw = dict(max_steps=max_steps, batch_size=batch_size, device=device, trajectory=trajectory, progress=progress,
              snapshots=snapshots, overrides=overrides, relax=relax, relax_model=relax_model, retries=retries)
    out = _generate_once(list(numbers_list), variant, lm, seed=seed, **kw)
    for a in range(1, attempts):
        redo = [k for k, g in enumerate(out) if not _valid(g)]
        if not redo:
            break
        # fresh noise for this attempt: a seed of its own, derived from the user's seed
        seed_a = int(np.random.SeedSequence([int(seed), 7919, a]).generate_state(1)[0] % (2**31))
        again = _generate_once([numbers_list[k] for k in redo], variant, lm, seed=seed_a, attempt=a + 1, **kw)
        for k, g in zip(redo, again):
            g.attempts = a + 1
            out[k] = g
    return out


def _valid(g: Generated) -> bool:
    from morered.generation.metrics import check_molecule

    return g.positions is not None and bool(check_molecule(g.numbers, g.positions).valid)


def _generate_once(numbers_list, variant, lm, *, max_steps, batch_size, seed, device, trajectory, progress,
                   snapshots, overrides, relax, relax_model, retries: int = 0, attempt: int = 1) -> list[Generated]:
    """One generation per composition (:func:`generate` without the attempts); ``lm`` resolved."""
    opts = generation_options(variant, lm.schedule.T, max_steps, batch_size, seed, device)
    if overrides:
        opts = dataclasses.replace(opts, **overrides)
    mols = initial_noise(numbers_list, seed)
    keep = set(int(m) for m in snapshots)
    snaps: dict[int, dict[int, np.ndarray]] = {k: {} for k in range(len(mols))} if keep else {}
    sampler = ddpm if variant == "ddpm" else adaptive
    what = f"generate ({variant})" + (f", attempt {attempt}" if attempt > 1 else "")
    res, traj = _run(sampler, lm, mols, opts, what, trajectory, progress, keep, snaps)
    out = []
    for k, ((z, _), r) in enumerate(zip(mols, res)):
        g = Generated(z, r.positions, r.steps, r.converged, r.t_final, r.trajectory_t,
                      traj.get(k) if r.error is None else None, r.error, steps_all=int(r.steps))
        if keep and r.error is None:  # a molecule that stopped earlier keeps its final structure
            g.snapshots = {m: snaps[k].get(m, r.positions) for m in sorted(keep)}
        out.append(g)
    # DDPM's fixed schedule always ends (converged = schedule ran out): no verdict to retry on
    for retry in range(1, (retries if variant != "ddpm" else 0) + 1):
        redo = [k for k, g in enumerate(out) if not g.converged]
        if not redo:
            break
        seed_r = retry_seed(seed, retry)
        again, traj = _run(sampler, lm, initial_noise([numbers_list[k] for k in redo], seed_r),
                           dataclasses.replace(opts, seed=seed_r), f"{what}, unconverged: retry {retry}",
                           trajectory, progress)
        for j, (k, r) in enumerate(zip(redo, again)):
            g = out[k]
            g.positions, g.steps, g.converged, g.t_final, g.trajectory_t, g.error = (
                r.positions, r.steps, r.converged, r.t_final, r.trajectory_t, r.error)
            g.trajectory = traj.get(j) if r.error is None else None
            g.retries, g.steps_all = retry, g.steps_all + int(r.steps)
    if relax:
        relax_generated(out, lm if relax_model is None and variant != "ddpm" else relax_model,
                        "as" if variant == "as" and relax_model is None else "jt", batch_size, seed, device,
                        trajectory)
    return out


def _run(sampler, lm, mols, opts, what: str, trajectory: bool, progress, keep: set[int] = frozenset(),
         snaps: dict | None = None):
    """One sampler call with the progress bar and the trajectories (``{k: [x_T, ...]}``, returned
    beside the results) asked for; the positions after each number of iterations in ``keep`` go
    to ``snaps[k][iteration]``."""
    traj = {k: [x.copy()] for k, (_, x) in enumerate(mols)} if trajectory else {}
    iters = np.zeros(len(mols), dtype=np.int64)
    bar = None
    if progress is True:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(mols), desc=what, unit="mol")

    def callback(ev):
        if trajectory:
            for k, x in zip(ev["mol"], ev["positions"]):
                traj[k].append(x)
        if keep:
            for k, x in zip(ev["mol"], ev["positions"]):
                iters[k] += 1
                if iters[k] in keep:
                    snaps[k][int(iters[k])] = x
        if bar is not None:
            bar.update(ev["n_done"])
        elif callable(progress):
            progress(ev["n_done"])

    try:
        res = sampler(lm.model, mols, lm.schedule, opts, callback if (trajectory or progress or keep) else None)
    finally:
        if bar is not None:
            bar.close()
    return res, traj


def relax_generated(generated: Sequence[Generated], model, variant: str, batch_size: int = 128, seed: int = 0,
                    device: str = "cpu", trajectory: bool = False) -> None:
    """Relax the generated structures in place with MoreRed's default relaxation rule
    (:func:`morered.sampling.api.relax`); a structure the relaxation refuses keeps its unrelaxed
    positions and the reason in ``relax_error``."""
    from ase import Atoms

    from morered.sampling.api import relax

    todo = [g for g in generated if g.positions is not None]
    if not todo:
        return
    res = relax([Atoms(numbers=g.numbers, positions=g.positions) for g in todo], model, variant,
                batch_size=batch_size, seed=seed, device=device, trajectory=trajectory)
    for g, r in zip(todo, res):
        if r.positions is None:
            g.relax_error = r.error or "relaxation refused the structure"
            continue
        g.unrelaxed, g.positions = g.positions, r.positions - r.positions.mean(0)
        g.relax_steps = int(r.steps)
        if g.trajectory is not None and r.trajectory:
            # one step label per frame: generation's, then the relaxation's (its first frame is
            # generation's last), then the relaxation's last predicted step on the last frame
            n_gen = len(g.trajectory)
            g.trajectory = g.trajectory + [x - x.mean(0) for x in r.trajectory[1:]]
            g.trajectory_t = list(g.trajectory_t or [])[:n_gen - 1] + list(r.trajectory_t) + [int(r.t_final)]


def generate_atoms(
    compositions: str | Sequence[int] | Sequence[str | Sequence[int]],
    n: int = 1,
    variant: str = "jt",
    *,
    model=None,
    time_model=None,
    max_steps: int = GENERATION_MAX_STEPS,
    batch_size: int = 128,
    seed: int = 0,
    device: str = "cpu",
    relax: bool = True,
    progress: bool = False,
    attempts: int = 1,
    retries: int = GENERATION_RETRIES,
):
    """New molecules as ASE ``Atoms`` (``morered.generate``): ``n`` per composition.

    Args:
        compositions: a sum formula (``"C7H10O2"``), a list of atomic numbers, an ``Atoms`` (its
            composition), or a list of any of these.
        n: molecules per composition.
        variant, model, time_model, max_steps, batch_size, seed, device, relax, progress, attempts,
            retries: as in :func:`generate`.

    Returns:
        one ``Atoms`` per molecule, compositions in order; ``info`` holds ``morered_valid``,
        ``morered_stable``, ``morered_steps``, ``morered_relax_steps``, ``morered_converged``,
        ``morered_attempts``, ``morered_retries`` and,
        when valid, ``morered_smiles``.  A molecule whose generation failed (non-finite model
        output) comes back with zero positions and the reason in ``info["morered_error"]``.

    Raises:
        OptionError: an unparsable or impossible composition, ``n`` < 1, a bad option.
    """
    from ase import Atoms

    from morered.generation.metrics import check_molecule

    if n < 1:
        raise OptionError(f"n = {n}: need at least 1 molecule per composition")
    single = isinstance(compositions, (str, Atoms)) or (
        len(compositions) > 0 and all(isinstance(z, (int, np.integer)) for z in compositions))
    items = [compositions] if single else list(compositions)
    if not items:
        raise OptionError("no compositions given")
    comps = []
    for c in items:
        z = (parse_composition(c) if isinstance(c, str) else
             np.asarray(c.numbers if isinstance(c, Atoms) else c, dtype=np.int64))
        comps += [z] * n
    gen = generate(comps, variant, model, time_model=time_model, max_steps=max_steps, batch_size=batch_size,
                   seed=seed, device=device, progress=progress, relax=relax, attempts=attempts, retries=retries)
    out = []
    for g in gen:
        a = Atoms(numbers=g.numbers, positions=g.positions if g.positions is not None else np.zeros((len(g.numbers), 3)))
        a.info.update(morered_steps=int(g.steps), morered_relax_steps=int(g.relax_steps),
                      morered_converged=bool(g.converged), morered_attempts=int(g.attempts),
                      morered_retries=int(g.retries))
        if g.positions is None:
            a.info.update(morered_valid=False, morered_stable=False, morered_error=g.error)
        else:
            c = check_molecule(g.numbers, g.positions)
            a.info.update(morered_valid=bool(c.valid), morered_stable=bool(c.stable))
            if c.valid:
                a.info["morered_smiles"] = c.smiles
        if g.relax_error:
            a.info["morered_relax_error"] = g.relax_error
        out.append(a)
    return out
