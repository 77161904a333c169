"""`morered benchmark`: training speed, relaxation quality."""

from __future__ import annotations

from morered.cli.common import positive_int

KERNELS = ("dense", "edges", "auto")


def add_parser(sub):
    p = sub.add_parser("benchmark", aliases=["bench"], help="benchmarks: training speed, relaxation quality and "
                       "speed, generation")
    bsub = p.add_subparsers(dest="benchmark", required=True)
    t = bsub.add_parser("train", help="training and inference molecules/s on QM9 batches")
    t.add_argument("--config", help="YAML config (default: the packaged defaults, 128 features)")
    t.add_argument("--batch-size", type=positive_int, default=128)
    t.add_argument("--batches", type=positive_int, default=10)
    t.add_argument("--device", default="cpu")
    t.add_argument("--threads", default="1,2", help="comma-separated torch thread counts to compare (default 1,2)")
    t.add_argument("--kernels", default="dense,edges", help="comma-separated PaiNN kernels to compare: dense, "
                   "edges, auto (default dense,edges)")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    t.set_defaults(func=_bench_train)
    _add_benchmark_relax(bsub)
    from morered.evaluation.speed import add_cli_arguments as add_speed

    add_speed(bsub.add_parser("speed", help="MoreRed-JT (kernels, threads, batch, stopping rule) vs MMFF94 vs "
                              "GFN2-xTB: structures/s and accuracy in one run"))
    _add_benchmark_generate(bsub)


def _bench_train(args) -> int:
    import torch

    from morered.training.bench import bench_train
    from morered.training.config import load_config

    from morered.cli.common import check_device
    from morered.errors import OptionError

    try:
        threads = [int(x) for x in str(args.threads).split(",") if x.strip()]
    except ValueError:
        raise OptionError(f"--threads {args.threads!r}: comma-separated integers, e.g. 1,2") from None
    if not threads or min(threads) < 1:
        raise OptionError(f"--threads {args.threads!r}: thread counts must be >= 1")
    kernels = [k.strip() for k in args.kernels.split(",") if k.strip()]
    bad = [k for k in kernels if k not in KERNELS]
    if not kernels or bad:
        raise OptionError(f"--kernels {args.kernels!r}: choose from {','.join(KERNELS)}")
    check_device(args.device)
    cfg = load_config(args.config, args.set)
    rows = []
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for kernel in kernels:
            r = bench_train(cfg, args.batch_size, args.batches, device=args.device, kernel=kernel)
            rows.append((kernel, n_threads, r))
    rep = cfg["model"]["representation"]
    print(f"model {cfg['model_type']}: {rep.get('name', 'painn')} {rep['n_features']} features x "
          f"{rep['n_interactions']} blocks, {r['parameters']} parameters; batches of {args.batch_size} QM9 "
          f"molecules ({r['atoms_per_batch']:.0f} atoms), device {args.device}, {args.batches} timed batches")
    print(f"{'kernel':<8} {'threads':>7} {'training mol/s':>15} {'inference mol/s':>16}")
    for kernel, n_threads, r in rows:
        print(f"{kernel:<8} {n_threads:>7} {r['train_mol_s']:15.1f} {r['infer_mol_s']:16.1f}")
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
