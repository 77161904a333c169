"""`morered benchmark`: training speed, relaxation quality."""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("benchmark", aliases=["bench"], help="benchmarks: training speed, relaxation quality")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    t = bsub.add_parser("train", help="training and inference molecules/s on QM9 batches")
    t.add_argument("--config", help="YAML config (default: the packaged defaults, 128 features)")
    t.add_argument("--batch-size", type=int, default=128)
    t.add_argument("--batches", type=int, default=10)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", type=int)
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.set_defaults(func=_bench_train)
    _add_benchmark_relax(bsub)
    _add_benchmark_generate(bsub)


def _bench_train(args) -> int:
    import torch

    from morered.training.bench import bench_train
    from morered.training.config import load_config

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config, args.set)
    r = bench_train(cfg, args.batch_size, args.batches, device=args.device)
    rep = cfg["model"]["representation"]
    print(f"model {cfg['model_type']}: PaiNN {rep['n_features']} features x {rep['n_interactions']} blocks, "
          f"{r['parameters']} parameters; batches of {args.batch_size} QM9 molecules "
          f"({r['atoms_per_batch']:.0f} atoms), device {args.device}, {r['threads']} threads")
    print(f"training : {r['train_mol_s']:8.1f} molecules/s")
    print(f"inference: {r['infer_mol_s']:8.1f} molecules/s")
    return 0


def _add_benchmark_relax(bsub):
    try:
        from morered.evaluation.benchmark import add_cli_arguments
    except ImportError:  # pragma: no cover - the evaluation extra is part of the package
        return
    p = bsub.add_parser("relax", help="MoreRed vs MMFF94 vs GFN2-xTB on QM9 test molecules (paper Fig. 4)")
    add_cli_arguments(p)


def _add_benchmark_generate(bsub):
    from morered.generation.benchmark import add_cli_arguments

    p = bsub.add_parser("generate", help="DDPM fixed schedule vs MoreRed-JT/AS generation from noise (paper "
                        "Table 1, Fig. 12)")
    add_cli_arguments(p)
