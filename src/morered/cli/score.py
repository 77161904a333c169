"""`morered score`: the predicted diffusion step of each structure."""

from __future__ import annotations

import sys

from morered.cli.common import EXIT_FATAL, EXIT_OK, EXIT_SOME_FAILED, add_model_flags, read_or_exit


def add_parser(sub):
    p = sub.add_parser("score", help="predicted diffusion step of each structure (distance from equilibrium)",
                       description="Print the predicted diffusion step t (0..T) of each structure and the RMSD "
                       "of a Gaussian displacement with that noise level. t near 0: at (the model's idea of) "
                       "equilibrium; the score is meaningful for molecules like the training data and "
                       "displacements up to ~1 A RMSD; beyond that (t > ~500) it saturates and only says 'far'.")
    p.add_argument("input")
    p.add_argument("-o", "--output", help="CSV file (default: print to stdout)")
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import csv
    import math

    from morered.io import validate
    from morered.sampling.api import load_time_model, score

    records = read_or_exit(args.input)
    if records is None:
        return EXIT_FATAL
    try:
        lm = load_time_model(args.time_model or args.model or "jt", args.device)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FATAL
    limit = args.max_atoms or 2 * lm.max_atoms
    for r in records:
        if r.error is None:
            r.error = validate(r.atoms, elements=lm.elements, max_atoms=limit)
    ok = [k for k, r in enumerate(records) if r.error is None]
    s = score([records[k].atoms for k in ok], lm, batch_size=args.batch_size, device=args.device,
              max_atoms=limit) if ok else []
    t_of = dict(zip(ok, s))
    rows = []
    ab = lm.schedule.alpha_bar
    for k, r in enumerate(records):
        reason = r.error
        t = t_of.get(k, float("nan"))
        if reason is not None or not math.isfinite(t):
            rows.append({"index": k, "name": r.name, "t": "", "rmsd_equiv": "", "error": reason or "not scored"})
        else:
            rows.append({"index": k, "name": r.name, "t": f"{t:.1f}",
                         "rmsd_equiv": f"{math.sqrt(3 * (1 - float(ab[round(t)]))):.3f}", "error": ""})
    out = open(args.output, "w", newline="") if args.output else sys.stdout
    w = csv.DictWriter(out, fieldnames=["index", "name", "t", "rmsd_equiv", "error"])
    w.writeheader()
    w.writerows(rows)
    if args.output:
        out.close()
    bad = [r for r in rows if r["error"]]
    for r in bad:
        print(f"error: {r['name']}: {r['error']}", file=sys.stderr)
    return EXIT_SOME_FAILED if bad else EXIT_OK
