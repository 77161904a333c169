"""`morered merge`: join the outputs of `morered relax --shard K/N` back into input order."""

from __future__ import annotations

from morered.cli.common import EXIT_CODES_HELP, EXIT_OK, EXIT_SOME_FAILED, check_output_file


def add_parser(sub):
    p = sub.add_parser("merge", help="join shard outputs of `relax --shard K/N` in input order",
                       description="Join the outputs of `morered relax --shard K/N` (and their .errors.csv "
                       "files) into one output in input order, by the morered_index field of every relaxed "
                       "structure. Streamed: memory holds one structure per shard. Exit code 1 when the "
                       "merged errors file is not empty.", epilog=EXIT_CODES_HELP)
    p.add_argument("shards", nargs="+", help="shard outputs (a missing one is fine if its errors file exists)")
    p.add_argument("-o", "--output", required=True, help="merged output; format by extension")
    p.set_defaults(func=run)


def run(args) -> int:
    from morered.io import check_output_format, errors_path
    from morered.sampling.stream import merge_files

    check_output_file(args.output, "-o", args.shards)
    check_output_format(args.output)
    check_output_file(errors_path(args.output), "-o (its errors file)", args.shards)
    n_out, n_err = merge_files(args.shards, args.output)
    print(f"{n_out} structures -> {args.output}" + (f", {n_err} errors -> {errors_path(args.output)}" if n_err else ""))
    return EXIT_SOME_FAILED if n_err else EXIT_OK
