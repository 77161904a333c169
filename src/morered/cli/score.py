"""`morered score`: the predicted diffusion step of each structure."""

from __future__ import annotations

import sys

from morered.cli.common import (EXIT_CODES_HELP, EXIT_OK, EXIT_SOME_FAILED, add_model_flags, check_output_file,
                                read_inputs)


def add_parser(sub):
    p = sub.add_parser("score", help="predicted diffusion step of each structure (distance from equilibrium)",
                       description="Print the predicted diffusion step t (0..T) of each structure and the RMSD "
                       "of a Gaussian displacement with that noise level. t near 0: at (the model's idea of) "
                       "equilibrium; the score is meaningful for molecules like the training data and "
                       "displacements up to ~1 A RMSD; beyond that (t > ~500) it saturates and only says 'far'. "
                       "Rejected structures get a row with the reason in the error column.",
                       epilog=EXIT_CODES_HELP)
    p.add_argument("input")
    p.add_argument("-o", "--output", help="CSV file (default: print to stdout); never the input")
    add_model_flags(p)
    p.set_defaults(func=run)


def run(args) -> int:
    import csv
    import math

    from morered.io import atomic_write, one_line, validate
    from morered.sampling.api import check_device, check_relax_options, load_time_model, model_limits, score

    check_relax_options(batch_size=args.batch_size, max_atoms=args.max_atoms)
    if args.output:
        check_output_file(args.output, "-o", [args.input])
    check_device(args.device)
    lm = load_time_model(args.time_model or args.model or "jt", args.device)
    records = read_inputs(args.input)
    limits = model_limits(lm, args.max_atoms)
    for r in records:
        if r.error is None:
            r.error = validate(r.atoms, **limits)
    ok = [k for k, r in enumerate(records) if r.error is None]
    s = score([records[k].atoms for k in ok], lm, batch_size=args.batch_size, device=args.device,
              max_atoms=args.max_atoms) if ok else []
    t_of = dict(zip(ok, s))
    rows = []
    ab = lm.schedule.alpha_bar
    for k, r in enumerate(records):
        reason = r.error
        t = t_of.get(k, float("nan"))
        if reason is not None or not math.isfinite(t):
            rows.append({"index": k, "name": r.name, "t": "", "rmsd_equiv": "",
                         "error": one_line(reason or "not scored: the model gave a non-finite step")})
        else:
            rows.append({"index": k, "name": r.name, "t": f"{t:.1f}",
                         "rmsd_equiv": f"{math.sqrt(3 * (1 - float(ab[round(t)]))):.3f}", "error": ""})
    fields = ["index", "name", "t", "rmsd_equiv", "error"]
    if args.output:
        with atomic_write(args.output) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields)
            w.writeheader()
            w.writerows(rows)
    else:
        w = csv.DictWriter(sys.stdout, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
        sys.stdout.flush()
    bad = [r for r in rows if r["error"]]
    for r in bad[:10]:
        print(f"error: {r['name']}: {r['error']}", file=sys.stderr)
    if len(bad) > 10:
        print(f"error: ... and {len(bad) - 10} more (see the error column)", file=sys.stderr)
    return EXIT_SOME_FAILED if bad else EXIT_OK
