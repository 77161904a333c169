"""Evaluation of relaxations: RMSD metrics, physics baselines, benchmark inputs, energies, report.

Data flow: :mod:`.inputs` (references and perturbed inputs) -> :mod:`.baselines` and the MoreRed
sampler (relaxed structures) -> :mod:`.rmsd` / :mod:`.energies` (scores) -> :mod:`.report`
(CSV, Markdown, plots); :func:`run_relax_benchmark` runs the whole chain.
"""

from morered.evaluation.baselines import BASELINES, BaselineResult, available
from morered.evaluation.benchmark import run_relax_benchmark, score
from morered.evaluation.rmsd import heavy_atoms, is_failure, kabsch_align, kabsch_rmsd, rmsd_ratio

__all__ = [
    "BASELINES",
    "BaselineResult",
    "available",
    "heavy_atoms",
    "is_failure",
    "kabsch_align",
    "kabsch_rmsd",
    "rmsd_ratio",
    "run_relax_benchmark",
    "score",
]
