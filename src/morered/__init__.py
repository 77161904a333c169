"""MoreRed: molecular relaxation by reverse diffusion with time-step prediction.

>>> import morered
>>> results = morered.relax(list_of_atoms)            # shipped JT model
>>> opt = morered.MoreRedOptimizer(atoms); opt.run()  # like an ASE optimizer
>>> new = morered.generate("C7H10O2", n=10)           # new molecules from noise (list of Atoms)
"""

__version__ = "0.1.0"

from morered.sampling.api import MoreRedOptimizer, RelaxResult, relax, score  # noqa: E402
from morered.sampling.models import load_model  # noqa: E402
from morered.generation.generate import generate_atoms as generate  # noqa: E402

__all__ = ["relax", "score", "generate", "MoreRedOptimizer", "RelaxResult", "load_model", "__version__"]
