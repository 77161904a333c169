"""`morered label`: GFN2-xTB energies and forces for QM9 molecules and displaced copies (force-field data)."""

from __future__ import annotations


def _floats(s: str) -> list[float]:
    return [float(x) for x in s.split(",") if x.strip()]


def add_parser(sub):
    p = sub.add_parser("label", help="GFN2-xTB energies and forces for force-field training (cached)")
    p.add_argument("--n-train", type=int, default=2000, help="training-split molecules")
    p.add_argument("--n-val", type=int, default=200, help="validation-split molecules")
    p.add_argument("--n-test", type=int, default=200, help="test-split molecules")
    p.add_argument("--n-normal-mode", type=int, help="normal-mode copies for the first N molecules of each "
                   "split only (a Hessian costs about 1 s per molecule; default: all)")
    p.add_argument("--temperatures", type=_floats, default=[300.0, 1000.0], help="normal-mode temperatures, K")
    p.add_argument("--gaussian-scales", type=_floats, default=[0.05, 0.15], help="Gaussian displacements, Å")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write the labels here instead of the cache ($MORERED_CACHE/labels)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads for tblite (set before it loads)")
    p.set_defaults(func=run)


def run(args) -> int:
    import os

    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    from morered.errors import OptionError
    from morered.forcefield.labels import make_labels

    if min(args.n_train, args.n_val, args.n_test) < 0:
        raise OptionError("--n-train, --n-val and --n-test must be >= 0")
    settings = {"n_train": args.n_train, "n_val": args.n_val, "n_test": args.n_test,
                "n_normal_mode": args.n_normal_mode, "temperatures": args.temperatures,
                "gaussian_scales": args.gaussian_scales, "seed": args.seed}
    labels, path = make_labels(settings, path=args.out)
    s = labels.settings
    print(f"{len(labels)} structures ({labels.n_atoms().sum()} atoms), {len(labels.failures)} left out, "
          f"{s.get('single_points', 0)} GFN2-xTB single points in {s.get('seconds', 0):.0f} s")
    for split in ("train", "val", "test"):
        kinds, counts = __import__("numpy").unique(labels.kind[labels.split == split], return_counts=True)
        print(f"  {split}: " + ", ".join(f"{k} {c}" for k, c in zip(kinds, counts)))
    print(f"labels: {path}")
    return 0
