"""Non-equilibrium inputs for the relaxation benchmark, and the user's own inputs.

Every generator takes the reference structures and returns inputs in the same order, with the
same atomic numbers in the same atom order and the same ids.  Each structure's random numbers
come from ``(seed, kind, id)`` only, so a molecule gets the same input whatever else is in the
set (the first 10 of a 100-molecule run equal a 10-molecule run with the same seed).  Where a
generator fails on a molecule (e.g. MMFF94 cannot type it) its position entry is None and
``errors`` says why; the benchmark reports such inputs as missing instead of relaxing them.

Kinds (SPEC §7, the paper's robustness and QM7-X-style tests):

- ``diffused_<t>``: forward diffusion of the reference to step t (polynomial schedule, T = 1000,
  centred noise); t = 50, 100, 150 give about 0.12, 0.25, 0.38 Å RMSD on QM9.
- ``normal_mode``: displacements along the GFN2-xTB normal modes of the reference with classical
  harmonic Boltzmann amplitudes (QM7-X protocol; QM7-X itself used DFTB3+MBD modes) at the
  benchmark's ``temperature`` (default 300 K); ``normal_mode_<T>`` at T kelvin (QM7-X used 1500 K).
  The random normal coordinates depend on (seed, id) only, so ``normal_mode_1500`` is the
  ``normal_mode_300`` displacement scaled by sqrt(5), and ``normal_mode_300`` equals ``normal_mode``
  at 300 K (one cache file).
- ``mmff_min`` / ``xtb_min``: the MMFF94 / GFN2-xTB minimum reached from the reference.
- ``etkdg``: an RDKit ETKDGv3 embedding made from the reference's bond graph (atom order and
  stereo kept), the geometry most chemists start from; it may be another conformer.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import numpy as np

# the generators live at the data floor (labels and training use them too); re-exported here
from morered.data.displacements import (  # noqa: F401
    EV_A2_AMU_TO_CM1 as _EV_A2_AMU_TO_CM1,
    K_B,
    apply_each as _each,
    centre as _centre,
    etkdg,
    gaussian,
    mmff_min,
    normal_mode,
    normal_modes,
    xtb_hessian,
    xtb_min,
)
from morered.data.displacements import rng_seed as _rng_seed
from morered.data.molecules import Structures

#: bump when a generator changes, so that stale cache files are not reused
CACHE_VERSION = 2

# ---------------------------------------------------------------------------- diffused


def diffused(refs: Structures, t: int, seed: int = 0, schedule=None) -> Structures:
    """Forward diffusion q(x_t | x_0) of each reference to step ``t`` with centred noise.

    Args:
        refs: reference structures (centred or not; they are centred first).
        t: diffusion step, 1..T.
        schedule: a :class:`morered.diffusion.schedule.NoiseSchedule`; default polynomial, T = 1000.
    """
    import torch

    from morered.diffusion.schedule import NoiseSchedule, diffuse

    schedule = schedule or NoiseSchedule("polynomial", 1000)

    def one(k, z, x):
        g = torch.Generator().manual_seed(int(_rng_seed(seed, f"diffused_{t}", refs.ids[k]).generate_state(1)[0]))
        x0 = torch.as_tensor(_centre(x), dtype=torch.float64)
        xt, _ = diffuse(x0, torch.tensor([int(t)]), torch.zeros(len(z), dtype=torch.long), schedule, g)
        return xt.numpy()

    return _each(refs, f"diffused_{t}", one)


# ---------------------------------------------------------------------------- by name, cached

_DIFFUSED = re.compile(r"^diffused_(\d+)$")
_NORMAL_MODE = re.compile(r"^normal_mode_(\d+(?:\.\d+)?)$")
KINDS = ("diffused_50", "diffused_100", "diffused_150", "normal_mode", "normal_mode_1500", "mmff_min", "xtb_min",
         "etkdg")
#: help text naming every kind
KINDS_HELP = "diffused_<t>, normal_mode (at --temperature), normal_mode_<T> (T in K), mmff_min, xtb_min, etkdg"


def is_kind(kind: str) -> bool:
    """Whether ``kind`` names an input kind (see :data:`KINDS_HELP`)."""
    try:
        input_settings(kind)
    except ValueError:
        return False
    return True


def input_settings(kind: str, seed: int = 0, temperature: float = 300.0) -> dict:
    """The settings that determine an input kind's structures (the cache key, less the ids)."""
    if m := _DIFFUSED.match(kind):
        return {"kind": "diffused", "t": int(m.group(1)), "seed": int(seed)}
    if kind == "normal_mode" or _NORMAL_MODE.match(kind):
        t = float(_NORMAL_MODE.match(kind).group(1)) if kind != "normal_mode" else float(temperature)
        if not t > 0:
            raise ValueError(f"input kind {kind!r}: the temperature must be positive")
        return {"kind": "normal_mode", "temperature": t, "seed": int(seed)}
    if kind == "mmff_min":
        return {"kind": kind, "max_steps": 10000}
    if kind == "xtb_min":
        return {"kind": kind, "max_steps": 1000, "fmax": 0.005}
    if kind == "etkdg":
        from rdkit import __version__ as rdkit_version

        return {"kind": kind, "seed": int(seed), "rdkit": rdkit_version}  # embeddings change with RDKit
    raise ValueError(f"unknown input kind {kind!r}; choose from {KINDS_HELP}")


def cache_path(settings: dict, ids) -> Path:
    """``$MORERED_CACHE/benchmark_inputs/<kind>-<settings>-<hash of ids>.npz``."""
    from morered.data.qm9 import cache_dir

    tag = "-".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in settings.items() if k != "kind")
    digest = hashlib.sha1(("\n".join(map(str, ids)) + f"\nv{CACHE_VERSION}").encode()).hexdigest()[:16]
    folder = cache_dir() / "benchmark_inputs"
    folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{settings['kind']}-{tag}-n{len(ids)}-{digest}.npz"


def make_inputs(kind: str, refs: Structures, seed: int = 0, temperature: float = 300.0, cache: bool = True) -> Structures:
    """Inputs of one kind for ``refs``, read from or written to the disk cache.

    Args:
        kind: ``diffused_<t>``, ``normal_mode``, ``normal_mode_<T>``, ``mmff_min``, ``xtb_min`` or ``etkdg``.
        seed: random seed (diffused, normal_mode, etkdg).
        temperature: K, for plain ``normal_mode`` (``normal_mode_<T>`` names its own).
        cache: use ``$MORERED_CACHE/benchmark_inputs`` (see :func:`cache_path`).
    """
    s = input_settings(kind, seed, temperature)
    path = cache_path(s, refs.ids) if cache else None
    if path is not None and path.exists():
        out = Structures.load(path)
        out.kind = kind
        return out
    if s["kind"] == "diffused":
        out = diffused(refs, s["t"], seed)
    elif s["kind"] == "normal_mode":
        out = normal_mode(refs, s["temperature"], seed)
    elif kind == "mmff_min":
        out = mmff_min(refs, s["max_steps"])
    elif kind == "etkdg":
        out = etkdg(refs, seed)
    else:
        out = xtb_min(refs, s["max_steps"], s["fmax"])
    out.kind = kind
    if path is not None:
        tmp = path.with_name(path.stem + f".{os.getpid()}.tmp.npz")
        out.save(tmp)
        os.replace(tmp, path)
    return out


def qm9_references(n: int, seed: int = 0) -> Structures:
    """``n`` QM9 test molecules chosen by ``seed`` (a prefix of one permutation of the test ids)."""
    from morered.data.qm9 import load_qm9, split_ids

    mols = load_qm9()
    test = split_ids(mols)["test"]
    if n > len(test):
        raise ValueError(f"n = {n} but the test split has {len(test)} molecules")
    ids = np.random.default_rng(seed).permutation(test)[:n]
    return Structures.from_molecules(mols.select_ids(ids), kind="reference")


# ---------------------------------------------------------------------------- user files


def read_structures(path, id_field: str = "id") -> Structures:
    """Read all structures of a file with :func:`morered.io.read_structures`; ids from a field.

    The id is ``atoms.info[id_field]`` (for SDF/MOL files: the property ``id_field``) if present,
    else, for SDF/MOL, the molecule name (title) if not empty, else the record index.  Ids are
    strings.  A record that cannot be used (e.g. an unparseable SDF record) raises ``ValueError``.
    """
    from morered.io import read_structures as read_records

    path = Path(path)
    ids, numbers, positions = [], [], []
    for rec in read_records(path):
        if rec.error is not None:
            raise ValueError(f"{path}: record {rec.index} ({rec.name}): {rec.error}")
        info = rec.atoms.info
        title = str(info.get("name", "")).strip() if rec.mol is not None else ""
        ids.append(str(info[id_field]) if id_field in info else (title or str(rec.index)))
        numbers.append(rec.atoms.get_atomic_numbers().astype(np.int64))
        positions.append(rec.atoms.get_positions().astype(np.float64))
    return Structures(np.array(ids, dtype=str), numbers, positions, kind=path.stem)


def read_user_inputs(inputs, refs, id_field: str = "id") -> tuple[Structures, Structures]:
    """A user's inputs and references, matched by id (``--inputs FILE --refs FILE``).

    Several inputs may share one reference (e.g. QM7-X's three per molecule).  Each input must
    have the same atomic numbers in the same order as its reference.

    Returns:
        ``(inputs, refs)`` of equal length, ``refs[k]`` being the reference of ``inputs[k]``;
        inputs whose id has no reference raise ``KeyError``.
    """
    x = read_structures(inputs, id_field)
    r = read_structures(refs, id_field)
    where: dict[str, int] = {}
    for k, i in enumerate(r.ids):
        if str(i) in where:
            raise ValueError(f"{refs}: id {i!r} appears more than once")
        where[str(i)] = k
    missing = [str(i) for i in x.ids if str(i) not in where]
    if missing:
        raise KeyError(f"{len(missing)} input ids have no reference in {refs}, e.g. {missing[:5]}")
    idx = [where[str(i)] for i in x.ids]
    bad = [str(x.ids[k]) for k, j in enumerate(idx) if not np.array_equal(x.numbers[k], r.numbers[j])]
    if bad:
        raise ValueError(f"{len(bad)} inputs differ from their reference in atoms or atom order, e.g. {bad[:5]}")
    x.kind = "user"
    ref = Structures(x.ids.copy(), [r.numbers[j] for j in idx], [r.positions[j] for j in idx], kind="reference")
    return x, ref


def qm7x_inputs(data_dir, n: int | None = None, seed: int = 0, split_file=None) -> tuple[dict, Structures]:
    """QM7-X's own displaced structures of test references, the paper's way (closest, middle and
    farthest by RMSD per reference): ``({"qm7x_closest": inputs, ...}, references)``."""
    from morered.data.qm7x import KINDS, relaxation_set

    s = relaxation_set(data_dir, split_file, seed, n)
    r = s["refs"]
    ids = np.asarray(r["keys"], dtype=str)
    refs = Structures(ids, r["numbers"], r["positions"], kind="reference")
    inputs = {}
    for kind in KINDS:
        errors = [None if x is not None else "no readable displaced structure" for x in s[kind]["positions"]]
        inputs[f"qm7x_{kind}"] = Structures(ids.copy(), [z.copy() for z in r["numbers"]], s[kind]["positions"],
                                            errors, f"qm7x_{kind}")
    return inputs, refs
