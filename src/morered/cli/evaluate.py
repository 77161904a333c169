"""`morered evaluate`: score structures made elsewhere (generated molecules)."""

from __future__ import annotations

from morered.cli.common import EXIT_OK


def add_parser(sub):
    p = sub.add_parser("evaluate", help="metrics of structures from any generator")
    esub = p.add_subparsers(dest="what", required=True)
    g = esub.add_parser("generated", help="stability, validity, uniqueness, novelty of generated molecules",
                        description="EDM atom/molecule stability, RDKit validity (connected; and EDM's "
                        "fragment rule), uniqueness and novelty (against the QM9 training split) of every "
                        "structure in FILE; each number names its checker. An unreadable record counts as "
                        "an invalid sample.")
    g.add_argument("file", help="any file morered reads (xyz, extxyz, sdf, ASE db, ...)")
    g.add_argument("--no-novelty", action="store_true", help="skip novelty (needs the QM9 training SMILES)")
    g.add_argument("--json", metavar="OUT", help="also write the numbers and checkers as JSON")
    g.set_defaults(func=run_generated)


def run_generated(args) -> int:
    import json

    from morered.generation.metrics import check_molecules, summarize, training_smiles
    from morered.io import read_structures

    records = read_structures(args.file)
    mols = [(r.atoms.numbers, r.atoms.positions) if r.atoms is not None else ([], [[0.0, 0.0, 0.0]])
            for r in records]
    metrics = summarize(check_molecules(mols), None if args.no_novelty else training_smiles())
    unread = sum(r.atoms is None for r in records)
    print(f"{args.file}: {len(records)} structures" + (f" ({unread} unreadable, counted as invalid)" if unread else ""))
    print("\n".join(metrics.lines()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(metrics.to_dict(), f, indent=1)
    return EXIT_OK
