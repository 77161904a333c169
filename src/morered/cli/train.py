"""`morered train`: diffusion, time or joint models on QM9 or your own structures."""

from morered.cli.common import int_or_str


def add_parser(sub):
    p = sub.add_parser("train", help="train a diffusion (ddpm), time (time) or joint (jt) model")
    p.add_argument("--model", dest="model_type", choices=["jt", "ddpm", "time", "forcefield"],
                   help="what to train (default: jt); forcefield: PaiNN energies and forces on `morered label` data")
    p.add_argument("--dens", action="store_true", help="forcefield: DeNS auxiliary denoising (forcefield.dens)")
    p.add_argument("--config", help="YAML file overriding the packaged defaults")
    p.add_argument("--out", required=True, help="folder for checkpoints, logs and the exported model")
    p.add_argument("--data", help="own equilibrium structures (xyz, extxyz, ASE db, sdf, ...) instead of QM9")
    p.add_argument("--max-steps", type=int, help="optimizer steps")
    p.add_argument("--max-time", help="wall-time budget, e.g. 50m, 2h, 1:30:00")
    p.add_argument("--limit-train", type=int, help="train on the first N training molecules")
    p.add_argument("--seed", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--devices", help="devices per node (DDP when > 1)")
    p.add_argument("--num-nodes", type=int)
    p.add_argument("--accelerator", choices=["cpu", "gpu", "cuda", "mps", "auto"])
    p.add_argument("--precision", help="32-true (default), bf16-mixed, 16-mixed")
    p.add_argument("--threads", type=int, help="torch CPU threads per process")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="any config key, e.g. --set optim.lr=5e-4 (repeatable)")
    p.set_defaults(func=run)


def run(args) -> int:
    from morered.training.config import load_config
    from morered.training.train import train

    flags = {
        "model_type": args.model_type, "data.source": args.data, "trainer.max_steps": args.max_steps,
        "trainer.max_time": args.max_time, "data.limit_train": args.limit_train, "seed": args.seed,
        "data.batch_size": args.batch_size, "trainer.devices": int_or_str(args.devices),
        "trainer.num_nodes": args.num_nodes, "trainer.accelerator": args.accelerator,
        "trainer.precision": args.precision, "trainer.threads": args.threads,
        "forcefield.dens": True if args.dens else None,
    }
    from morered.training.config import parse_override

    overrides = dict(parse_override(s) for s in args.set)
    overrides.update({k: v for k, v in flags.items() if v is not None})
    cfg = load_config(args.config, overrides)
    path = train(cfg, args.out)
    print(f"model written to {path}")
    return 0
