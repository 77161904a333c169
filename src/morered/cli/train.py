"""`morered train`: diffusion, time or joint models on QM9 or your own structures."""

from morered.cli.common import EXIT_CODES_HELP, check_output_dir, int_or_str, nonneg_int, positive_int


def add_parser(sub):
    p = sub.add_parser("train", help="train a diffusion (ddpm), time (time) or joint (jt) model",
                       description="Train a model into --out; rerunning the same command resumes from "
                       "--out/checkpoints/last.ckpt (saved every trainer.checkpoint_every_steps steps, every "
                       "trainer.checkpoint_every_minutes minutes, and on SIGTERM / Ctrl-C). With --data, "
                       "structures that cannot be used (unreadable records, < 2 atoms, NaN, overlapping atoms) "
                       "are skipped with a warning and listed in --out/skipped.csv; nothing is created before "
                       "the data and options were checked.", epilog=EXIT_CODES_HELP)
    p.add_argument("--model", dest="model_type", choices=["jt", "ddpm", "time", "forcefield"],
                   help="what to train (default: jt); forcefield: PaiNN energies and forces on `morered label` data")
    p.add_argument("--dens", action="store_true", help="forcefield: DeNS auxiliary denoising (forcefield.dens)")
    p.add_argument("--config", help="YAML file overriding the packaged defaults")
    p.add_argument("--out", required=True, help="folder for checkpoints, logs and the exported model")
    p.add_argument("--data", help="own equilibrium structures (xyz, extxyz, ASE db, sdf, ...) instead of QM9")
    p.add_argument("--dataset", choices=["qm9", "qm7x"], help="a known data set (default qm9); qm7x needs --data-dir")
    p.add_argument("--data-dir", help="qm7x: folder of the official QM7-X HDF5 files")
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps")
    p.add_argument("--max-time", help="wall-time budget, e.g. 50m, 2h, 1:30:00")
    p.add_argument("--limit-train", type=positive_int, help="train on the first N training molecules")
    p.add_argument("--seed", type=nonneg_int)
    p.add_argument("--init-from", metavar="MODEL.pt", help="warm start from the weights of a model file (e.g. "
                   "src/morered/models/jt.pt) with a fresh optimizer; the config must describe the same network")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--devices", help="devices per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=positive_int)
    p.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    p.add_argument("--precision", help="32-true (default), bf16-mixed, 16-mixed")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads per process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optim.lr=5e-4 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from pathlib import Path

    from morered.errors import InputError
    from morered.training.config import load_config, parse_override
    from morered.training.train import train

    check_output_dir(args.out, "--out")
    if args.data is not None and not Path(args.data).is_file():
        raise InputError(f"--data {args.data}: {'is a directory' if Path(args.data).is_dir() else 'no such file'}")

    flags = {
        "model_type": args.model_type, "data.source": args.data or args.dataset, "data.data_dir": args.data_dir,
        "trainer.max_steps": args.max_steps,
        "trainer.max_time": args.max_time, "data.limit_train": args.limit_train, "seed": args.seed,
        "init_from": args.init_from,
        "data.batch_size": args.batch_size, "trainer.devices": int_or_str(args.devices),
        "trainer.num_nodes": args.num_nodes, "trainer.accelerator": args.accelerator,
        "trainer.precision": args.precision, "trainer.threads": args.threads,
        "forcefield.dens": True if args.dens else None,
    }
    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(args.config, overrides)
    path = train(cfg, args.out)
    print(f"model written to {path}")
    return 0
