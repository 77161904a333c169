"""One relaxation report from two `morered benchmark relax` runs on the same inputs.

When a release changes one model, only its rows need rerunning: the other methods' rows of the
earlier run still hold (same molecules, same seed, same input kinds).  Every (method, kind) group
of NEW replaces BASE's, everything else is kept, and the report (summary.md / .json, results.csv,
plots) is rewritten with each group's own wall time and a `merged` line saying which rows came from
where.  Refuses runs whose inputs differ (:func:`morered.evaluation.report.merge_runs`).

    python benchmarks/merge_runs.py BASE_DIR NEW_DIR --out OUT_DIR
"""

import argparse
import sys

from morered.evaluation.report import merge_runs, write_report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("base")
    ap.add_argument("new")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    try:
        rows, timings, meta = merge_runs(args.base, args.new)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    files = write_report(rows, args.out, meta=meta, timings=timings)
    print(f"{len(rows)} rows -> {args.out} ({', '.join(sorted(files))})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
