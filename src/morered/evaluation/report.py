"""Relaxation benchmark report: per-structure CSV, Markdown summary and PNG plots.

The input is a list of row dicts, one per (method, input structure), with the keys of
:data:`ROW_FIELDS` (missing ones are left empty).  A structure a method failed on has
``rmsd = ratio = inf`` and ``failure = True``: it is counted, never dropped, so medians and
quartiles may be ``inf``.
"""

from __future__ import annotations

import csv
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

#: columns of ``results.csv``, in order (extra scalar keys are appended after them)
ROW_FIELDS = (
    "method", "kind", "mol_id", "index", "n_atoms",
    "rmsd_in", "rmsd", "rmsd_heavy_in", "rmsd_heavy", "ratio", "failure",
    "converged", "steps", "seconds", "threads", "error",
    "t0", "t_final", "dE_dft", "dE_ani1x", "dE_ani1ccx", "dE_xtb", "bond_err", "angle_err",
)  # fmt: skip
#: a relaxation is within chemical accuracy when |ΔE| <= this (kcal/mol)
CHEMICAL_ACCURACY = 1.0
#: ΔE columns (kcal/mol) and the level each comes from, in report order
ENERGY_SOURCES = {
    "dE_dft": "DFT B3LYP/6-31G(2df,p) (PySCF, density fitting)",
    "dE_ani1x": "ANI-1x (torchani 2.0)",
    "dE_ani1ccx": "ANI-1ccx (torchani 2.0)",
    "dE_xtb": "GFN2-xTB (tblite)",
}
#: the cheap energies whose agreement with the DFT ΔE the report measures
SCREEN_KEYS = ("dE_ani1x", "dE_ani1ccx", "dE_xtb")
_BIG = 1e300  # stands in for inf inside quantile interpolation


def _floats(rows, key) -> np.ndarray:
    out = []
    for r in rows:
        v = r.get(key)
        out.append(np.nan if v is None or v == "" else float(v))
    return np.asarray(out, dtype=np.float64)


def quantiles(values, qs=(0.25, 0.5, 0.75)) -> list[float]:
    """Quantiles that treat ``inf`` (failed structures) as larger than everything; NaN ignored."""
    v = np.asarray(values, np.float64)
    v = v[~np.isnan(v)]
    if not len(v):
        return [math.nan] * len(qs)
    q = np.quantile(np.minimum(v, _BIG), qs)
    return [math.inf if x >= _BIG / 10 else float(x) for x in q]


def energy_stats(values) -> dict:
    """ΔE statistics of one group (kcal/mol): the centre and the tail.

    ``values`` may hold ``inf`` (the method failed: no structure) and NaN (the energy could not be
    computed): both count in ``n`` and as not within 1 kcal/mol.  ``median``, ``q1``, ``q3`` are of
    the signed ΔE (failures above everything, NaN left out); ``p90_abs`` and ``max_abs`` of |ΔE|
    (a structure below the reference, e.g. another conformer, is a tail too).

    Returns:
        ``{"n", "median", "q1", "q3", "p90_abs", "max_abs", "within_1_pct"}``.
    """
    v = np.asarray(values, np.float64).ravel()
    n = len(v)
    if not n:
        return {"n": 0, "median": math.nan, "q1": math.nan, "q3": math.nan, "p90_abs": math.nan,
                "max_abs": math.nan, "within_1_pct": math.nan}
    q1, med, q3 = quantiles(v, (0.25, 0.5, 0.75))
    a = np.abs(v)
    finite = a[np.isfinite(a)]
    return {"n": n, "median": med, "q1": q1, "q3": q3, "p90_abs": quantiles(a, [0.9])[0],
            "max_abs": math.inf if np.isinf(a).any() else (float(np.nanmax(a)) if (~np.isnan(a)).any() else math.nan),
            "within_1_pct": 100.0 * float((finite <= CHEMICAL_ACCURACY).sum()) / n}


def _ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 0..n-1 with ties averaged (for Spearman's rho)."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v), dtype=float)
    _, inv, counts = np.unique(v, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / counts)[inv]


def tracking(a, b) -> dict:
    """How well a screen's ΔE ``a`` tracks the reference ΔE ``b`` on the pairs finite in both:
    ``{"n", "mae", "pearson", "spearman"}`` (kcal/mol; correlations NaN below 3 pairs)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    out = {"n": int(ok.sum()), "mae": float(np.abs(a - b).mean()) if ok.any() else math.nan,
           "pearson": math.nan, "spearman": math.nan}
    if len(a) >= 3 and a.std() > 0 and b.std() > 0:
        out["pearson"] = float(np.corrcoef(a, b)[0, 1])
        ra, rb = _ranks(a), _ranks(b)
        if ra.std() > 0 and rb.std() > 0:
            out["spearman"] = float(np.corrcoef(ra, rb)[0, 1])
    return out


def screen_tracking(rows: list[dict], ref_key: str = "dE_dft") -> list[dict]:
    """For every screen in :data:`SCREEN_KEYS` present beside ``ref_key``: :func:`tracking` of the
    relaxed structures (every method but ``identity``) per input kind and pooled (kind ``all``),
    and of everything including the unrelaxed inputs (kind ``all + inputs``).

    The inputs lie tens to hundreds of kcal/mol up and make any screen correlate; the relaxed
    structures, a few kcal/mol apart, are where a screen must rank methods while tuning.
    """
    out = []
    for key in SCREEN_KEYS:
        both = [r for r in rows if r.get(key) is not None and r.get(ref_key) is not None]
        if not both:
            continue
        relaxed = [r for r in both if r["method"] != "identity"]
        groups = [(kind, [r for r in relaxed if r["kind"] == kind]) for kind in _order(relaxed, "kind")]
        groups += [("all", relaxed), ("all + inputs", both)]
        for kind, g in groups:
            if g:
                out.append({"screen": key, "reference": ref_key, "kind": kind,
                            **tracking(_floats(g, key), _floats(g, ref_key))})
    return out


def bond_types(rows: list[dict]) -> list[str]:
    """The ``bond_err_<type>`` types in the rows, most frequent first."""
    count: dict[str, int] = defaultdict(int)
    for r in rows:
        for k, v in r.items():
            if k.startswith("bond_err_") and v is not None:
                count[k[len("bond_err_"):]] += 1
    return sorted(count, key=lambda t: (-count[t], t))


def raised_pct(rows: list[dict], inputs: dict, key: str) -> float:
    """Failure by energy: % of ``rows`` whose ΔE(result) is above ΔE(input) by ``key``.

    A relaxation should lower the energy; where RMSD cannot judge it (an ETKDG embedding in another
    conformer: RMSD ratio ~1 whatever happens), a raised energy is the failure.  ``inputs`` maps
    ``(kind, index)`` to the unrelaxed input's row (the ``identity`` method).  A result without a
    finite ΔE (failed, or energy not computed) counts as raised; rows whose input has no finite ΔE
    are left out.  NaN when no row has an input energy.
    """
    n = raised = 0
    for r in rows:
        src = inputs.get((r["kind"], str(r.get("index"))))
        e_in = _floats([src], key)[0] if src is not None else math.nan
        if not math.isfinite(e_in):
            continue
        e = _floats([r], key)[0]
        n += 1
        raised += int(not math.isfinite(e) or e > e_in)
    return 100.0 * raised / n if n else math.nan


def summarize(rows: list[dict], timings: dict | None = None) -> list[dict]:
    """Aggregate rows per (method, kind).

    Args:
        rows: per-structure rows (see :data:`ROW_FIELDS`).
        timings: optional ``{(method, kind): {"seconds": wall time of the whole batch,
            "threads": int}}``; without it the rows' ``seconds`` are summed.
    Returns:
        one dict per (method, kind), in first-seen order: n, n_error, rmsd_in median, rmsd and
        rmsd_heavy median/q1/q3, ratio median, failure %, converged %, mean steps, seconds per
        structure, structures per second, threads, and ΔE statistics where present (with the
        ``identity`` rows in ``rows``: ``{e}_raised_pct``, see :func:`raised_pct`).
    """
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["method"], r["kind"])].append(r)
    inputs = {(r["kind"], str(r.get("index"))): r for r in rows if r["method"] == "identity"}
    timings = timings or {}
    out = []
    for (method, kind), g in groups.items():
        n = len(g)
        ratio = _floats(g, "ratio")
        s = {"method": method, "kind": kind, "n": n, "n_error": sum(1 for r in g if r.get("error"))}
        s["rmsd_in_median"] = quantiles(_floats(g, "rmsd_in"), [0.5])[0]
        for key in ("rmsd", "rmsd_heavy"):
            s[f"{key}_q1"], s[f"{key}_median"], s[f"{key}_q3"] = quantiles(_floats(g, key))
        s["ratio_median"] = quantiles(ratio, [0.5])[0]
        s["failure_pct"] = 100.0 * sum(bool(r.get("failure")) for r in g) / n
        s["converged_pct"] = 100.0 * sum(bool(r.get("converged")) for r in g) / n
        steps = _floats(g, "steps")
        s["steps_mean"] = float(np.nanmean(steps)) if np.isfinite(steps).any() else math.nan
        t = timings.get((method, kind), {})
        total = float(t["seconds"]) if "seconds" in t else float(np.nansum(_floats(g, "seconds")))
        s["seconds_total"] = total
        s["s_per_structure"] = total / n
        s["structures_per_s"] = n / total if total > 0 else math.inf
        threads = t.get("threads") or sorted({int(r["threads"]) for r in g if r.get("threads") not in (None, "")})
        s["threads"] = threads if isinstance(threads, int) else "/".join(map(str, threads))
        for e in ENERGY_SOURCES:
            has = [r for r in g if r.get(e) not in (None, "")]
            if has:  # a failed structure (ΔE inf or NaN) is counted, and not within chemical accuracy
                s.update({f"{e}_{k}": v for k, v in energy_stats(_floats(has, e)).items()})
                if method != "identity":
                    s[f"{e}_raised_pct"] = raised_pct(has, inputs, e)
        for key in ["bond_err", "angle_err"] + [f"bond_err_{t}" for t in bond_types(g)]:
            has = [r for r in g if r.get(key) not in (None, "")]
            if has:
                s[f"{key}_median"] = quantiles(_floats(has, key), [0.5])[0]
        out.append(s)
    return out


# ---------------------------------------------------------------------------- files


def _cell(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return str(bool(v))
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else repr(float(v))
    return str(v)


def write_csv(rows: list[dict], path) -> Path:
    """One line per row; list-valued keys (trajectories) are left out."""
    extra = []
    for r in rows:
        for k, v in r.items():
            if k not in ROW_FIELDS and k not in extra and not isinstance(v, (list, tuple, np.ndarray)):
                extra.append(k)
    cols = list(ROW_FIELDS) + extra
    path = Path(path)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for r in rows:
            w.writerow([_cell(r.get(c)) for c in cols])
    return path


def read_csv(path) -> list[dict]:
    """Rows back from :func:`write_csv` (numbers as float, booleans as bool, empty as None)."""
    out = []
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            row = {}
            for k, v in r.items():
                if v == "":
                    row[k] = None
                elif v in ("True", "False"):
                    row[k] = v == "True"
                else:
                    try:
                        row[k] = float(v)
                    except ValueError:
                        row[k] = v
            out.append(row)
    return out


def _f(v, digits=3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, float) and math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if isinstance(v, float) else str(v)


def _g(v) -> str:
    """Speeds span 1e-2..1e4: 3 significant figures."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return _f(v)
    return f"{v:.3g}"


def summary_markdown(summary: list[dict], meta: dict | None = None, skipped: dict | None = None,
                     missing_inputs: dict | None = None, tracks: list[dict] | None = None) -> str:
    """The Markdown report: settings, the metrics table, energies, skipped methods."""
    lines = ["# Relaxation benchmark", ""]
    if meta:
        lines += [f"- {k}: {v}" for k, v in meta.items()] + [""]
    lines += [
        "RMSD after Kabsch alignment to the reference (Å), median [first–third quartile]; ratio = "
        "RMSD(result) / RMSD(input); a failure is a ratio > 1 (up to the rounding tolerance stated "
        "above), and a structure a method raised an error on counts as a failure (ratio inf). Time is wall time of the whole batch in this run.",
        "",
        "| method | kind | n | errors | RMSD in | RMSD | RMSD heavy | median ratio | failure % | "
        "converged % | mean steps | s/structure | structures/s | threads |",
        "|---|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['method']} | {s['kind']} | {s['n']} | {s['n_error']} | {_f(s['rmsd_in_median'])} | "
            f"{_f(s['rmsd_median'])} [{_f(s['rmsd_q1'])}–{_f(s['rmsd_q3'])}] | "
            f"{_f(s['rmsd_heavy_median'])} [{_f(s['rmsd_heavy_q1'])}–{_f(s['rmsd_heavy_q3'])}] | "
            f"{_f(s['ratio_median'])} | {_f(s['failure_pct'], 1)} | {_f(s['converged_pct'], 1)} | "
            f"{_f(s['steps_mean'], 1)} | {_g(s['s_per_structure'])} | {_g(s['structures_per_s'])} | "
            f"{s['threads']} |"
        )
    for e, title in ENERGY_SOURCES.items():
        rows = [s for s in summary if f"{e}_n" in s]
        if rows:
            lines += ["", f"## ΔE = E(result) − E(reference), {title}, kcal/mol", "",
                      "Median [first–third quartile] of the signed ΔE; the tail as the 90th percentile and the "
                      "maximum of |ΔE|; a failed structure counts as inf and as not within 1 kcal/mol. "
                      "% raised: the failure rate by energy, structures whose energy at this level ended above "
                      "their input's (needs the identity rows; a failed structure counts as raised) -- the "
                      "failure measure for inputs that RMSD cannot judge, such as ETKDG embeddings in "
                      "another conformer.", "",
                      "| method | kind | n | median ΔE [q1–q3] | p90 abs(ΔE) | max abs(ΔE) | % within 1 kcal/mol "
                      "| % raised |",
                      "|---|---|---:|---|---:|---:|---:|---:|"]
            lines += [f"| {s['method']} | {s['kind']} | {s[f'{e}_n']} | {_f(s[f'{e}_median'], 2)} "
                      f"[{_f(s[f'{e}_q1'], 2)}–{_f(s[f'{e}_q3'], 2)}] | {_f(s[f'{e}_p90_abs'], 2)} | "
                      f"{_f(s[f'{e}_max_abs'], 2)} | {_f(s[f'{e}_within_1_pct'], 1)} | "
                      f"{_f(s.get(f'{e}_raised_pct'), 1) if f'{e}_raised_pct' in s else '—'} |" for s in rows]
    if tracks:
        lines += ["", "## How well the cheap energies track the DFT ΔE", "",
                  "Pairs with both ΔE finite; relaxed structures (every method but identity) per kind and "
                  "pooled, then everything including the unrelaxed inputs (which lie far up and make any screen "
                  "correlate); MAE of ΔE(screen) − ΔE(DFT) in kcal/mol.", "",
                  "| screen | kind | n | MAE | Pearson r | Spearman ρ |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {ENERGY_SOURCES[t['screen']]} | {t['kind']} | {t['n']} | {_f(t['mae'], 2)} | "
                  f"{_f(t['pearson'], 3)} | {_f(t['spearman'], 3)} |" for t in tracks]
    geo = [s for s in summary if "bond_err_median" in s]
    if geo:
        types = []
        for s in geo:
            types += [k[len("bond_err_"):-len("_median")] for k in s
                      if k.startswith("bond_err_") and k.endswith("_median") and k != "bond_err_median"
                      and k[len("bond_err_"):-len("_median")] not in types]
        lines += ["", "## Bond lengths and angles vs the reference", "",
                  "Bonds of the reference by covalent radii (d < 1.2 (r_i + r_j)); per structure the mean "
                  "abs(Δ length) over all bonds and per bond type (mÅ) and the mean abs(Δ angle) over bonded "
                  "triples (degrees); median over the structures.", "",
                  "| method | kind | all bonds | " + " | ".join(types) + " | angle (°) |",
                  "|---|---|" + "---:|" * (len(types) + 2)]
        milli = lambda v: _f(v * 1000 if isinstance(v, float) and math.isfinite(v) else v, 1)  # noqa: E731
        lines += [f"| {s['method']} | {s['kind']} | {milli(s['bond_err_median'])} | "
                  + " | ".join(milli(s.get(f"bond_err_{t}_median")) for t in types)
                  + f" | {_f(s.get('angle_err_median'), 2)} |" for s in geo]
    if missing_inputs:
        lines += ["", "## Inputs that could not be generated (not relaxed)", ""]
        lines += [f"- {k}: {len(v)} ({'; '.join(v[:3])}{' …' if len(v) > 3 else ''})" for k, v in missing_inputs.items()]
    if skipped:
        lines += ["", "## Skipped methods", ""] + [f"- {k}: {v}" for k, v in skipped.items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _order(rows, key):
    seen = []
    for r in rows:
        if r[key] not in seen:
            seen.append(r[key])
    return seen


def _colors(names):
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    return {m: cmap(i % 10) for i, m in enumerate(names)}


def _log_limits(values, clip) -> tuple[float, float]:
    """Decade-rounded (low, high) of the finite positive values, inside ``clip``."""
    v = np.asarray(values, float)
    v = v[np.isfinite(v) & (v > 0)]
    if not len(v):
        return clip
    lo = max(clip[0], 10.0 ** np.floor(np.log10(v.min())))
    hi = clip[1] if len(v) < len(values) else min(clip[1], 10.0 ** np.ceil(np.log10(v.max())))
    return lo, max(hi, lo * 10)


def plot_ratio_boxes(rows: list[dict], path, clip=(1e-3, 1e2)) -> Path | None:
    """RMSD-ratio box plots, one panel per input kind, one box per method (paper Fig. 4)."""
    rows = [r for r in rows if r.get("ratio") is not None]
    if not rows:
        return None
    plt = _plt()
    methods, kinds = _order(rows, "method"), _order(rows, "kind")
    colors = _colors(methods)
    ncol = min(3, len(kinds))
    nrow = math.ceil(len(kinds) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(1.2 + 0.62 * len(methods) * ncol + 0.6 * ncol, 3.6 * nrow),
                             sharey=True, squeeze=False)
    lo, hi = _log_limits(_floats(rows, "ratio"), clip)
    for ax, kind in zip(axes.flat, kinds):
        data, names, fails = [], [], []
        for m in methods:
            g = [r for r in rows if r["method"] == m and r["kind"] == kind]
            if g:
                v = _floats(g, "ratio")
                data.append(np.clip(np.nan_to_num(v, nan=hi, posinf=hi), lo, hi))
                names.append(m)
                fails.append(100.0 * np.mean([bool(r.get("failure")) for r in g]))
        if not data:
            ax.set_visible(False)
            continue
        bp = ax.boxplot(data, widths=0.6, patch_artist=True, showfliers=True,
                        flierprops=dict(marker=".", markersize=3, alpha=0.5),
                        medianprops=dict(color="black"))
        for patch, m in zip(bp["boxes"], names):
            patch.set_facecolor(colors[m])
            patch.set_alpha(0.75)
        ax.axhline(1.0, color="crimson", lw=1, ls="--")
        for i, fail in enumerate(fails, start=1):
            ax.text(i, hi * 1.6, f"{fail:.0f}%", ha="center", va="bottom", fontsize=7, color="crimson")
        ax.set_yscale("log")
        ax.set_ylim(lo * 0.7, hi * 6)
        ax.set_xticks(range(1, len(names) + 1), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(kind, fontsize=10, pad=14)
        ax.grid(axis="y", which="major", alpha=0.3)
    for ax in axes.flat[len(kinds):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("RMSD ratio (result / input)")
    errs = sum(1 for r in rows if not math.isfinite(float(r["ratio"])))
    fig.suptitle("RMSD ratio; dashed: ratio 1, red %: failures (ratio > 1)"
                 + (f"; {errs} errors drawn at {hi:g}" if errs else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_rmsd_scatter(rows: list[dict], path, clip=(1e-3, 10.0)) -> Path | None:
    """RMSD before vs after relaxation, one panel per method, colour by kind (log-log)."""
    rows = [r for r in rows if r.get("rmsd_in") is not None and r.get("rmsd") is not None]
    if not rows:
        return None
    plt = _plt()
    methods, kinds = _order(rows, "method"), _order(rows, "kind")
    colors = _colors(kinds)
    ncol = min(3, len(methods))
    nrow = math.ceil(len(methods) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 3.4 * nrow), sharex=True, sharey=True, squeeze=False)
    lo, hi = _log_limits(np.concatenate([_floats(rows, "rmsd_in"), _floats(rows, "rmsd")]), clip)
    for ax, m in zip(axes.flat, methods):
        for kind in kinds:
            g = [r for r in rows if r["method"] == m and r["kind"] == kind]
            if not g:
                continue
            x = np.clip(_floats(g, "rmsd_in"), lo, hi)
            y = np.nan_to_num(_floats(g, "rmsd"), nan=hi, posinf=hi)
            bad = y >= hi
            y = np.clip(y, lo, hi)
            ax.scatter(x[~bad], y[~bad], s=8, alpha=0.6, color=colors[kind], label=kind)
            if bad.any():
                ax.scatter(x[bad], y[bad], s=18, marker="x", color=colors[kind])
        ax.plot([lo, hi], [lo, hi], color="gray", lw=1, ls="--")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi * 1.5)
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
    for ax in axes.flat[len(methods):]:
        ax.set_visible(False)
    for ax in axes[-1, :]:
        ax.set_xlabel("RMSD input (Å)")
    for ax in axes[:, 0]:
        ax.set_ylabel("RMSD result (Å)")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(kinds)), fontsize=8, markerscale=2,
               frameon=False)
    fig.suptitle("RMSD to the reference before vs after; below the diagonal = improved; x = error", fontsize=9)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_trajectories(rows: list[dict], path, per_method: int = 6) -> Path | None:
    """Predicted diffusion step vs iteration for a few relaxations per method (paper Fig. 3b)."""
    rows = [r for r in rows if r.get("trajectory_t") is not None and len(r["trajectory_t"]) >= 2]
    if not rows:
        return None
    plt = _plt()
    methods = _order(rows, "method")
    fig, axes = plt.subplots(1, len(methods), figsize=(4.2 * len(methods), 3.4), squeeze=False)
    for ax, m in zip(axes[0], methods):
        g = [r for r in rows if r["method"] == m]
        # spread the examples over the kinds: round-robin through them
        by_kind = defaultdict(list)
        for r in g:
            by_kind[r["kind"]].append(r)
        pick, k = [], 0
        while len(pick) < per_method and any(by_kind.values()):
            kinds = [kk for kk in by_kind if by_kind[kk]]
            lst = by_kind[kinds[k % len(kinds)]]
            pick.append(lst.pop((3 * k) % len(lst)))  # different molecules in different kinds
            k += 1
        for r in pick:
            t = np.asarray(r["trajectory_t"], float)
            ax.plot(np.arange(len(t)), t, lw=1.2, label=f"{r['kind']} #{r['mol_id']}")
        ax.set_xlabel("iteration")
        ax.set_ylabel("predicted step t̂")
        ax.set_title(m, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def plot_energies(rows: list[dict], path, key: str = "dE_dft") -> Path | None:
    """ΔE (kcal/mol) box plots per method, one box per kind; band = ±1 kcal/mol (paper Fig. 6).

    Symmetric-log y axis (linear within ±1 kcal/mol); failed structures (ΔE inf) are left out of
    the boxes and counted in the x labels.
    """
    rows = [r for r in rows if r.get(key) is not None]
    if not rows:
        return None
    plt = _plt()
    methods, kinds = _order(rows, "method"), _order(rows, "kind")
    colors = _colors(kinds)
    width = 0.8 / len(kinds)
    source = ENERGY_SOURCES.get(key, key)
    fig, ax = plt.subplots(figsize=(min(14.0, 2.0 + 0.28 * len(methods) * len(kinds) + 0.6 * len(methods)), 4.0))
    labels = []
    for i, m in enumerate(methods):
        n_bad = 0
        for j, kind in enumerate(kinds):
            v = _floats([r for r in rows if r["method"] == m and r["kind"] == kind], key)
            n_bad += int((~np.isfinite(v)).sum())
            v = v[np.isfinite(v)]
            if len(v):
                bp = ax.boxplot([v], positions=[i - 0.4 + (j + 0.5) * width], widths=width * 0.85,
                                patch_artist=True, medianprops=dict(color="black"),
                                flierprops=dict(marker=".", markersize=3))
                bp["boxes"][0].set_facecolor(colors[kind])
        labels.append(m + (f"\n({n_bad} failed)" if n_bad else ""))
    ax.axhspan(-CHEMICAL_ACCURACY, CHEMICAL_ACCURACY, color="green", alpha=0.15, label="±1 kcal/mol")
    ax.axhline(0.0, color="gray", lw=0.8)
    ax.set_yscale("symlog", linthresh=1.0)
    ax.set_xticks(range(len(methods)), labels, fontsize=8)
    ax.set_xlim(-0.6, len(methods) - 0.4)
    ax.set_ylabel("ΔE (kcal/mol, symlog)")
    ax.legend([plt.Rectangle((0, 0), 1, 1, color=colors[k]) for k in kinds] + [plt.Rectangle((0, 0), 1, 1, color="green", alpha=0.15)],
              kinds + ["±1 kcal/mol"], fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(f"E(result) − E(reference), {source}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def _jsonable(v):
    """Strict JSON: inf/NaN as the strings "inf"/"nan", numpy scalars as Python ones."""
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v if isinstance(v, (str, int, float, bool)) or v is None else str(v)


def write_report(rows: list[dict], out, meta: dict | None = None, timings: dict | None = None,
                 skipped: dict | None = None, missing_inputs: dict | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``summary.md``, ``summary.json`` and the PNG plots into ``out``.

    Returns:
        ``{name: path}`` of the files written.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(rows, timings)
    tracks = screen_tracking(rows)
    files = {"results.csv": write_csv(rows, out / "results.csv")}
    md = summary_markdown(summary, meta, skipped, missing_inputs, tracks)
    (out / "summary.md").write_text(md)
    files["summary.md"] = out / "summary.md"
    doc = {"meta": meta or {}, "summary": summary, "tracking": tracks, "skipped": skipped or {},
           "missing_inputs": missing_inputs or {}}
    (out / "summary.json").write_text(json.dumps(_jsonable(doc), indent=1))
    files["summary.json"] = out / "summary.json"
    traj = [{"method": r["method"], "kind": r["kind"], "mol_id": r["mol_id"], "trajectory_t": list(map(int, r["trajectory_t"]))}
            for r in rows if r.get("trajectory_t") is not None]
    if traj:
        (out / "trajectories.json").write_text(json.dumps(_jsonable(traj)))
        files["trajectories.json"] = out / "trajectories.json"
    for name, fn in (("ratio_boxplot.png", plot_ratio_boxes), ("rmsd_before_after.png", plot_rmsd_scatter),
                     ("trajectories.png", plot_trajectories)):
        p = fn(rows, out / name)
        if p is not None:
            files[name] = p
    for key in ENERGY_SOURCES:
        p = plot_energies(rows, out / f"energies_{key}.png", key)
        if p is not None:
            files[p.name] = p
    return files


# ---------------------------------------------------------------------------- merging two runs


def _run_timings(run: Path) -> dict:
    doc = json.loads((run / "summary.json").read_text())
    return {(s["method"], s["kind"]): {"seconds": s["seconds_total"], "threads": s["threads"]}
            for s in doc["summary"]}


def merge_runs(base, new) -> tuple[list[dict], dict, dict]:
    """Rows, timings and meta of the report directory ``base`` with every (method, kind) group of
    ``new`` in place of its own, in ``base``'s table order.

    When a release changes one model only its rows need rerunning: the other methods' rows of the
    earlier run still hold if both runs relaxed the same inputs.  Raises ``ValueError`` when a
    structure present in both (same kind and index) has another molecule or input RMSD.
    """
    base, new = Path(base), Path(new)
    rows_b, rows_n = read_csv(base / "results.csv"), read_csv(new / "results.csv")
    inputs_b = {(r["kind"], r["index"]): (r["mol_id"], r["rmsd_in"]) for r in rows_b}
    for r in rows_n:
        key = (r["kind"], r["index"])
        if key in inputs_b:
            mol, rin = inputs_b[key]
            same = mol == r["mol_id"] and (rin == r["rmsd_in"] or math.isclose(rin, r["rmsd_in"], rel_tol=1e-9))
            if not same:
                raise ValueError(f"{base} and {new} relaxed different inputs ({key[0]} #{key[1]:.0f}: molecule "
                                 f"{mol} vs {r['mol_id']}, input RMSD {rin} vs {r['rmsd_in']}); rerun every method")
    replaced = {(r["method"], r["kind"]) for r in rows_n}
    rows = [r for r in rows_b if (r["method"], r["kind"]) not in replaced] + rows_n
    methods = {m: k for k, m in enumerate(dict.fromkeys(r["method"] for r in rows_b + rows_n))}
    kinds = {m: k for k, m in enumerate(dict.fromkeys(r["kind"] for r in rows_b + rows_n))}
    rows.sort(key=lambda r: (kinds[r["kind"]], methods[r["method"]]))
    for r in rows:  # the CSV holds trajectories as text
        if isinstance(r.get("trajectory_t"), str):
            r["trajectory_t"] = json.loads(r["trajectory_t"])
    timings = {**{k: v for k, v in _run_timings(base).items() if k not in replaced}, **_run_timings(new)}
    meta_b = json.loads((base / "summary.json").read_text()).get("meta", {})
    meta_n = json.loads((new / "summary.json").read_text()).get("meta", {})
    meta = {**meta_b, "methods": ", ".join(methods)}
    meta["merged"] = (f"{', '.join(sorted({m for m, _ in replaced}))} rows from {new} (dated "
                      f"{meta_n.get('date', '?')}); all other rows from {base} (dated {meta_b.get('date', '?')})")
    return rows, timings, meta
