"""`morered generate`: new molecules from pure noise for given compositions."""

from __future__ import annotations

import sys

from morered.cli.common import EXIT_OK, EXIT_SOME_FAILED, add_model_flags, positive_int


def add_parser(sub):
    from morered.generation.generate import (GENERATION_MAX_RESTARTS, GENERATION_MAX_STEPS,
                                             GENERATION_RESTART_PATIENCE, GENERATION_RESTART_T, GENERATION_RETRIES)

    p = sub.add_parser("generate", help="generate new molecules from pure noise for given compositions",
                       description="Generate molecules from pure noise: x_T ~ centred N(0, I) for each "
                       "composition, then MoreRed's adaptive schedule (jt, as: the step re-predicted from the "
                       "structure at every iteration) or DDPM's fixed schedule T..1 (ddpm), then (unless "
                       "--no-relax) MoreRed's default relaxation of each result. Each output "
                       "structure carries morered_valid, morered_steps, morered_relax_steps and, when valid, "
                       "morered_smiles. Exit code: 0 = every "
                       "composition gave a structure (valid or not), 1 = some failed (non-finite model "
                       "output; OUTPUT's .errors.csv), 2 = nothing done (bad options or compositions).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--composition", action="append", metavar="FORMULA",
                     help="sum formula, e.g. C7H10O2 (repeatable; -n molecules each)")
    src.add_argument("--from-test", type=int, metavar="N", help="N compositions drawn with --seed from the "
                     "QM9 test split (the paper's protocol)")
    src.add_argument("--from-file", metavar="FILE", help="the compositions of the structures in FILE")
    p.add_argument("-n", type=int, default=1, help="molecules per --composition (default 1)")
    p.add_argument("-o", "--output", required=True, help="output file, any ase.io format by extension; .sdf "
                   "gets bonds (EDM bond orders) for valid molecules and none for the others")
    p.add_argument("--variant", choices=["jt", "as", "ddpm"], default="jt",
                   help="jt (default; shipped JT model), as (shipped ddpm noise + time model), ddpm (fixed "
                   "schedule with the shipped ddpm model)")
    p.add_argument("--max-steps", type=int, default=GENERATION_MAX_STEPS, help="jt/as: most reverse steps per "
                   "molecule (default %(default)s); ddpm always runs all T steps")
    p.add_argument("--restart-patience", type=int, default=GENERATION_RESTART_PATIENCE, metavar="N",
                   help="jt/as: re-noise a run whose predicted step has not reached a new minimum for N steps "
                   "to t = %d, at most %d times (default %%(default)s; 0: off, the paper's plain adaptive "
                   "schedule)" % (GENERATION_RESTART_T, GENERATION_MAX_RESTARTS))
    p.add_argument("--retries", type=int, default=GENERATION_RETRIES, metavar="R",
                   help="jt/as: a run the time head has not brought to convergence within --max-steps is run "
                   "again from fresh noise, at most R times (default %(default)s; the model's own verdict, no "
                   "validity check; 0: off); each structure carries morered_retries")
    p.add_argument("--seed", type=int, default=0, help="seed of the compositions drawn, x_T and the sampler "
                   "noise (same seed and batch size: same molecules)")
    p.add_argument("--attempts", type=int, default=1, metavar="K", help="generate a composition again from "
                   "fresh noise while its result is not valid, at most K generations in all (default 1: one "
                   "each, the protocol of published validity numbers); each structure carries "
                   "morered_attempts, and the summary gives the first attempt's validity beside the final one")
    p.add_argument("--no-relax", action="store_true", help="skip the final relaxation (MoreRed's default "
                   "relaxation rule with the same networks; for ddpm the shipped JT model): the structures "
                   "as the reverse diffusion from noise left them")
    p.add_argument("--trajectory", metavar="DIR", help="write one extxyz trajectory per molecule to DIR "
                   "(generation, then the final relaxation)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch CPU threads (default: "
                   "torch's choice, all cores; on the 2-core machine 2 threads generated 0.40 molecules/s with the "
                   "default retries, 1.01 with --retries 0 (100 compositions))")
    p.add_argument("--no-novelty", action="store_true", help="skip novelty (needs the QM9 training SMILES)")
    p.add_argument("--no-progress", action="store_true")
    add_model_flags(p)
    p.set_defaults(func=run)


def compositions(args, elements, max_atoms):
    """The atomic numbers of every molecule to generate (OptionError/InputError on bad input)."""
    from morered.errors import OptionError
    from morered.generation.generate import (check_compositions, compositions_from_file, compositions_from_test,
                                             parse_composition)

    if args.n < 1:
        raise OptionError(f"-n {args.n}: need at least 1 molecule per composition")
    if args.composition:
        return [parse_composition(c, elements, max_atoms) for c in args.composition for _ in range(args.n)]
    comps = (compositions_from_test(args.from_test, args.seed) if args.from_test is not None
             else compositions_from_file(args.from_file))
    check_compositions(comps, elements, max_atoms)
    return comps


def run(args) -> int:
    import time

    from morered.errors import ModelError, OptionError
    from morered.generation.generate import generate
    from morered.generation.metrics import check_molecules, summarize
    from morered.io import check_output_format
    from morered.sampling.api import resolve_model

    from morered.cli.common import check_output_dir, check_output_file
    from morered.io import errors_path

    try:  # everything that can be refused is refused before any work is done
        check_output_format(args.output)
    except ValueError as e:
        raise OptionError(f"-o {args.output}: {e}") from e
    inputs = [args.from_file] if getattr(args, "from_file", None) else []
    check_output_file(args.output, "-o", inputs)
    check_output_file(errors_path(args.output), "-o (its errors file)", inputs)
    if getattr(args, "trajectory", None):
        check_output_dir(args.trajectory, "--trajectory")
    if args.max_steps < 1 or args.batch_size < 1 or args.attempts < 1:
        raise OptionError("--max-steps, --batch-size and --attempts must be at least 1")
    if args.restart_patience < 0:
        raise OptionError(f"--restart-patience {args.restart_patience}: must be 0 (off) or more")
    if args.retries < 0:
        raise OptionError(f"--retries {args.retries}: must be 0 (off) or more")
    try:
        lm = resolve_model(args.model, args.variant, args.device, args.time_model)
    except (FileNotFoundError, ValueError) as e:
        raise ModelError(str(e)) from e
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    max_atoms = args.max_atoms or lm.max_atoms
    comps = compositions(args, lm.elements, max_atoms)
    t0 = time.time()
    gen = generate(comps, args.variant, lm, max_steps=args.max_steps, batch_size=args.batch_size, seed=args.seed,
                   device=args.device, trajectory=bool(args.trajectory), progress=not args.no_progress,
                   max_atoms=max_atoms, relax=not args.no_relax, attempts=args.attempts, retries=args.retries,
                   overrides=None if args.variant == "ddpm" else {"restart_patience": args.restart_patience})
    wall = time.time() - t0
    refused = [(k, g) for k, g in enumerate(gen) if g.relax_error]
    for k, g in refused[:5]:
        print(f"warning: {_name(k, g.numbers)} written unrelaxed: {g.relax_error}", file=sys.stderr)
    if len(refused) > 5:
        print(f"warning: {len(refused) - 5} more structures written unrelaxed", file=sys.stderr)
    checks = check_molecules([(g.numbers, g.positions if g.positions is not None else [[float("nan")] * 3])
                              for g in gen])
    train = None
    if not args.no_novelty:
        try:
            from morered.generation.metrics import training_smiles

            train = training_smiles()
        except (ImportError, OSError, ModuleNotFoundError) as e:
            print(f"warning: no novelty ({e})", file=sys.stderr)
    metrics = summarize(checks, train)
    failed = write_generated(args.output, gen, checks, args.variant)
    if args.trajectory:
        write_trajectories(args.trajectory, gen)
    relaxed = "" if args.no_relax else ", relaxed"
    retried = ""
    if args.variant != "ddpm" and args.retries:
        retried = (f"; {sum(g.retries > 0 for g in gen)} of {len(gen)} run again from fresh noise (not converged "
                   f"within --max-steps), mean steps {sum(g.steps_all for g in gen) / len(gen):.0f} per molecule")
    if args.attempts > 1:
        first = sum(g.attempts == 1 and c.valid for g, c in zip(gen, checks)) / len(gen)
        relaxed += (f", up to {args.attempts} attempts: first attempt valid {100 * first:.1f} %, "
                    f"{sum(g.attempts for g in gen)} generations")
    print(f"{len(gen)} molecules ({args.variant}{relaxed}, seed {args.seed}): {metrics.summary()}{retried}; "
          f"{len(gen) / max(wall, 1e-9):.2f} molecules/s ({wall:.1f} s) -> {args.output}")
    if failed:
        from morered.io import errors_path, write_errors

        ep = errors_path(args.output)
        write_errors(ep, failed)
        print(f"{len(failed)} molecules failed, reasons in {ep}", file=sys.stderr)
        return EXIT_SOME_FAILED
    return EXIT_OK


def _name(k: int, numbers) -> str:
    from morered.generation.generate import formula

    return f"gen{k:05d}_{formula(numbers)}"


def write_generated(path, generated, checks, variant: str):
    """Write the generated structures (the one place output is written: switch to an atomic
    writer here).  SDF: the EDM bond orders of valid molecules, no bonds for the others.
    ``morered_smiles`` is set on valid molecules only (an empty string would corrupt the next
    key of an extxyz comment line as ase writes it).
    Returns the records that could not be written (non-finite output)."""
    import numpy as np
    from ase import Atoms
    from rdkit import Chem

    from morered.generation.metrics import bond_orders, molecule_from_bonds
    from morered.io import Record, write_structures

    records, results = [], []
    for k, (g, c) in enumerate(zip(generated, checks)):
        name = _name(k, g.numbers)
        atoms = Atoms(numbers=g.numbers, positions=g.positions if g.positions is not None else np.zeros((len(g.numbers), 3)))
        atoms.info["name"] = name
        mol = None
        if g.positions is not None:
            orders = bond_orders(g.numbers, g.positions) if c.valid else np.zeros((len(g.numbers),) * 2, int)
            mol = molecule_from_bonds(g.numbers, orders)
            if c.valid:
                Chem.SanitizeMol(mol)
            mol.SetProp("_Name", name)
        records.append(Record(name, k, atoms, mol, g.error))
        # morered_smiles None (absent) when the molecule is not valid
        results.append({"positions": g.positions, "error": g.error, "morered_valid": bool(c.valid),
                        "morered_smiles": c.smiles, "morered_steps": int(g.steps),
                        "morered_stable": bool(c.stable), "morered_converged": bool(g.converged),
                        "morered_variant": variant, "morered_relax_steps": int(g.relax_steps),
                        "morered_attempts": int(g.attempts), "morered_retries": int(g.retries)})
    return write_structures(path, records, results)


def write_trajectories(folder, generated) -> None:
    """One extxyz per molecule (x_T first), each frame labelled with the step used from it."""
    from pathlib import Path

    from morered.io import write_trajectory

    Path(folder).mkdir(parents=True, exist_ok=True)
    for k, g in enumerate(generated):
        if g.trajectory is None:
            continue
        ts = list(g.trajectory_t or [])[:len(g.trajectory)]
        ts += [g.t_final] * (len(g.trajectory) - len(ts))
        name = _name(k, g.numbers)
        write_trajectory(Path(folder) / f"{name}.extxyz", g.numbers, g.trajectory, ts, name)
