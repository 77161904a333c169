"""Reverse-diffusion samplers for relaxation and generation, batched, one signature.

Every sampler is ``sampler(model, molecules, schedule, options, callback=None) -> list[Relaxed]``:

- ``model(batch, t_norm=None) -> {P.t_pred: [n_mol], P.eps_pred: [n_atoms, 3]}`` (see
  :mod:`morered.nn.model`); the samplers never import a network class.
- ``molecules``: list of ``(numbers [n], positions [n, 3] Å)``.
- ``options``: :class:`SamplerOptions`.
- ``callback(event)``: called after every step with a dict (``mol``: indices of the molecules
  in the pool, ``positions``: their positions after the step, ``t_hat``: the step each used,
  ``n_done``: how many of them finished with this step).

Molecules are processed in a pool of at most ``batch_size``: a molecule leaves the pool when it
converges or runs out of steps, and the next waiting molecule takes its place, so converged
molecules cost nothing.  Model evaluation runs in the model's dtype (float32), the position
update in float64 (SPEC §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch

from morered import properties as P
from morered.data.batch import centred_noise
from morered.diffusion.schedule import NoiseSchedule, ddim_step, predict_x0, reverse_step


#: AS/JT relaxation rule, chosen by measurement on 100 QM9 validation molecules
#: (benchmarks/tune_relax.py, table in src/morered/models/README.md):
#: - adaptive phase: from the predicted step t a deterministic DDIM jump to 0.8 t (``jump``);
#: - it ends when the predicted step reaches t_conv, or when it has not reached a new minimum for
#:   ``patience`` steps (the time head rarely says exactly 0) -- or at once when the input's first
#:   prediction is <= t_eq (already at equilibrium in the model's eyes);
#: - then a fixed deterministic tail from step ``tail_t`` to 0 in ``tail_steps`` DDIM jumps: the
#:   time head stops before the last bond-length noise is gone, the tail removes it;
#: - an input already at equilibrium takes a short tail from ``eq_tail_t`` (same stride) instead of
#:   one mean step: the time head cannot see soft-mode (normal-mode, force-field) distortions, but
#:   the denoiser still removes them.
#: Against the first release's rule (patience 50, no tail, DDPM steps): t = 100 inputs 0.070 ->
#: 0.061 Å in 108 -> 40 steps.  Second round, scored also by ANI-1x ΔE (relaxed - reference):
#: tail 10 -> 25 jumps and the equilibrium tail from 40: t = 100 ΔE median 0.41 -> 0.31 kcal/mol
#: (85 -> 94 % within 1 kcal/mol) in 38 -> 53 steps; 300 K normal modes 0.114 -> 0.102 Å, ΔE 1.35
#: -> 0.68, 90th percentile 13.5 -> 1.9; MMFF94 minima ΔE 2.01 -> 0.51; GFN2-xTB minima ΔE 0.71
#: -> 0.22 and 0.062 -> 0.055 Å, but failures (RMSD ratio > 1) 3 -> 9 %.
DEFAULT_T_CONV = 0
DEFAULT_PATIENCE = 10
DEFAULT_T_EQ = 20
DEFAULT_TAIL_T = 100
DEFAULT_TAIL_STEPS = 25
DEFAULT_JUMP = 0.2
DEFAULT_EQ_TAIL_T = 40
DEFAULT_TAIL_SCALE = 1.5
DEFAULT_TAIL_T_MAX = 200

#: why a relaxation stopped (``Relaxed.stop``, the ``morered_stop`` field of written structures)
STOP_CONVERGED = "converged"            # AS/JT: predicted step <= t_conv; ITP/DDPM: schedule ran to 0
STOP_PLATEAU = "plateau"                # AS/JT: no new lowest predicted step for ``patience`` steps
STOP_AT_EQUILIBRIUM = "at_equilibrium"  # AS/JT: the input's first predicted step <= t_eq
STOP_MAX_STEPS = "max_steps"            # ran out of steps
STOP_ERROR = "error"                    # the model gave non-finite values
STOP_REASONS = (STOP_CONVERGED, STOP_PLATEAU, STOP_AT_EQUILIBRIUM, STOP_MAX_STEPS, STOP_ERROR)


@dataclass
class SamplerOptions:
    """Options shared by all samplers.

    Attributes:
        max_steps: most reverse steps per molecule (the reference's 1000).
        t_conv: AS/JT stop once the predicted step is <= t_conv (after one last mean step).
        patience: AS/JT also stop when the predicted step has not reached a new minimum for this
            many steps (0: off).
        t_eq: AS/JT leave an input whose first predicted step is <= t_eq after one mean step
            (-1: off).
        t_start: DDPM only: the step the input is taken to be at.
        stochastic: add the posterior noise sigma_t z at each step (DDPM's sampler).  Off by default
            for relaxation: the deterministic mean step lands closer to the minimum (README).
        noise_scale: with ``stochastic``, the posterior noise is ``noise_scale * sigma_t z`` (1: DDPM,
            the default; generation from noise measured worse at 0.7-0.8 and 1.1-1.2: README).
        final_step: AS/JT, on convergence: ``mean`` (one last deterministic reverse step, the
            reference) or ``x0`` (jump to the clean structure the noise prediction implies).
        tail_t: AS/JT: a molecule whose adaptive phase ends (converged or plateau) continues
            with the fixed deterministic schedule from step ``tail_t`` down to 0 instead of one
            last step (0: off).  The time head stops early, before the last bond-length noise is
            gone; a short fixed tail removes it.
        tail_steps: number of (DDIM) jumps of that tail; 0: one step at a time (``tail_t`` steps).
        tail_scale, tail_t_max: AS/JT, with ``tail_scale`` > 0: each molecule's tail starts at
            ``clamp(round(tail_scale * t0), tail_t, max(tail_t, tail_t_max))`` (``t0`` its first
            predicted step) instead of ``tail_t``, in the same ``tail_steps`` jumps: large or soft
            distortions get a longer tail, small ones keep ``tail_t`` (0: off, the fixed tail; default
            1.5 and 200, chosen on validation: models README, fourth release).
        eq_tail_t: AS/JT: an input already at equilibrium (first predicted step <= t_eq) takes
            the fixed deterministic tail from this step (with the tail's stride) instead of one
            mean step (0: off).
        jump: AS/JT adaptive phase: from the predicted step t, a deterministic DDIM jump to
            ``floor(t (1 - jump))`` (at least one step down) instead of the DDPM step to t - 1
            (0: off).
        t_floor: AS/JT adaptive phase, with ``t_floor`` > 0: the step used after ``k`` reverse steps
            is ``max(predicted, t_floor - k)``: the time head can hold the fixed schedule back (the
            structure is noisier than the schedule says) but never run ahead of it (0: off, the
            default).  Measured for generation: from T it diverges with a JT model, whose noise head
            is trained on its own time prediction (never above ~900); from 500 no gain (README).
        restart_patience, restart_t, max_restarts: AS/JT, with ``restart_patience`` > 0: a molecule
            whose predicted step has not reached a new minimum for ``restart_patience`` steps (and is
            still above ``t_conv``) is *re-noised* from its predicted step t to ``restart_t`` by the
            forward process, x <- sqrt(ab_r / ab_t) x + sqrt(1 - ab_r / ab_t) z, and goes on
            adaptively, at most ``max_restarts`` times (the step counts against ``max_steps``).  For
            generation: a run from noise that hovers in a strained structure gets room to rearrange
            (0: off, the default; never used by relaxation).
        batch_size: molecules evaluated together.
        seed: seed of the noise (stochastic updates and generation).
        device: torch device for the model evaluation.
    """

    max_steps: int = 1000
    t_conv: int = DEFAULT_T_CONV
    patience: int = DEFAULT_PATIENCE
    t_eq: int = DEFAULT_T_EQ
    t_start: int | None = None
    stochastic: bool = False
    noise_scale: float = 1.0
    final_step: str = "mean"
    tail_t: int = DEFAULT_TAIL_T
    tail_steps: int = DEFAULT_TAIL_STEPS
    eq_tail_t: int = DEFAULT_EQ_TAIL_T
    jump: float = DEFAULT_JUMP
    tail_scale: float = DEFAULT_TAIL_SCALE
    tail_t_max: int = DEFAULT_TAIL_T_MAX
    t_floor: int = 0
    restart_patience: int = 0
    restart_t: int = 300
    max_restarts: int = 1
    batch_size: int = 128
    seed: int = 0
    device: str | torch.device = "cpu"


@dataclass
class Relaxed:
    """Result for one molecule.  ``positions`` in Å, in the input's frame (same centre); None with
    an ``error`` when the model produced non-finite values for this molecule.  ``stop``: one of
    :data:`STOP_REASONS`; ``converged`` is true for ``converged`` and ``at_equilibrium`` (the
    model judged the structure to be at equilibrium), false for a plateau or the step limit."""

    positions: np.ndarray | None
    t0: int
    steps: int
    converged: bool
    t_final: int
    trajectory_t: list[int] | None = field(default=None, repr=False)
    error: str | None = None
    stop: str = STOP_CONVERGED


class _Pool:
    """The molecules currently being denoised, concatenated (float64 positions)."""

    def __init__(self, device):
        self.device = device
        self.x = torch.zeros((0, 3), dtype=torch.float64, device=device)
        self.Z = torch.zeros(0, dtype=torch.long, device=device)
        self.n = torch.zeros(0, dtype=torch.long, device=device)
        self.mol = torch.zeros(0, dtype=torch.long)  # global molecule index (cpu)

    def __len__(self):
        return len(self.n)

    @property
    def idx_m(self):
        return torch.repeat_interleave(torch.arange(len(self.n), device=self.device), self.n)

    def add(self, items):
        """items: list of (global index, numbers, centred positions float64)."""
        if not items:
            return
        self.x = torch.cat([self.x] + [torch.as_tensor(p, dtype=torch.float64, device=self.device) for _, _, p in items])
        self.Z = torch.cat([self.Z] + [torch.as_tensor(z, dtype=torch.long, device=self.device) for _, z, _ in items])
        self.n = torch.cat([self.n, torch.tensor([len(z) for _, z, _ in items], dtype=torch.long, device=self.device)])
        self.mol = torch.cat([self.mol, torch.tensor([k for k, _, _ in items], dtype=torch.long)])

    def keep(self, keep_mol: torch.Tensor):
        """Keep the molecules where ``keep_mol`` [n_mol] (bool, cpu) is true."""
        keep_atoms = keep_mol.to(self.device)[self.idx_m]
        self.x, self.Z = self.x[keep_atoms], self.Z[keep_atoms]
        self.n, self.mol = self.n[keep_mol.to(self.device)], self.mol[keep_mol]

    def batch(self, dtype=torch.float32) -> dict:
        return {P.R: self.x.to(dtype), P.Z: self.Z, P.idx_m: self.idx_m, P.n_atoms: self.n}

    def split(self, x: torch.Tensor) -> list[np.ndarray]:
        return list(torch.split(x.detach().cpu(), self.n.tolist()))


def _model_dtype(model) -> torch.dtype:
    p = next(iter(model.parameters()), None)
    return p.dtype if p is not None else torch.float32


def _round_steps(t_norm: torch.Tensor, T: int) -> torch.Tensor:
    """Predicted t/T -> integer step: clamp to [0, 1], scale, round (SPEC §6).  A non-finite
    prediction becomes -1 (the samplers report it as an error, never as converged)."""
    t = t_norm.detach().double().cpu()
    steps = torch.round(torch.nan_to_num(t, nan=0.0).clamp(0.0, 1.0) * T).long()
    return torch.where(torch.isfinite(t), steps, torch.full_like(steps, -1))


def _predict_time(model, batch) -> torch.Tensor:
    """t/T per molecule from the time head only, when the model offers that."""
    f = getattr(model, "predict_time", None)
    return f(batch) if f is not None else model(batch)[P.t_pred]


@torch.no_grad()
def predict_steps(model, molecules, T: int, batch_size: int, device, dtype=torch.float32) -> torch.Tensor:
    """Predicted diffusion step (0..T, long) of each molecule, in batches."""
    from morered.data.batch import collate, to_device

    out = []
    for s in range(0, len(molecules), batch_size):
        chunk = molecules[s:s + batch_size]
        b = to_device(collate([x for _, x in chunk], [z for z, _ in chunk]), device)
        b[P.R] = b[P.R].to(dtype)
        out.append(_round_steps(_predict_time(model, b), T))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def _finite_per_molecule(x: torch.Tensor, idx_m: torch.Tensor, n_mol: int) -> torch.Tensor:
    """[n_mol] bool (cpu): all entries of the molecule's rows of ``x`` are finite."""
    bad_atoms = (~torch.isfinite(x)).any(dim=-1).long()
    return torch.zeros(n_mol, dtype=torch.long, device=x.device).index_add_(0, idx_m, bad_atoms).cpu() == 0


def _run(
    model: Callable,
    molecules: Sequence[tuple[np.ndarray, np.ndarray]],
    schedule: NoiseSchedule,
    options: SamplerOptions,
    variant: str,
    callback: Callable | None = None,
) -> list[Relaxed]:
    """The one reverse-diffusion loop behind every sampler; ``variant`` picks the step rule.

    AS/JT molecules are in one of two phases: *adaptive* (the step is re-predicted before every
    reverse step) and, when ``tail_t`` > 0, a final *tail* on the fixed schedule tail_t -> 0.
    ITP/DDPM molecules follow the fixed schedule from their first step.
    """
    o = options
    device = torch.device(o.device)
    T = schedule.T
    gen = torch.Generator().manual_seed(int(o.seed))
    n_total = len(molecules)
    adaptive_variant = variant in ("as", "jt")
    centres = [np.asarray(x, np.float64).mean(0) for _, x in molecules]
    results: list[Relaxed | None] = [None] * n_total
    # per-molecule state, indexed by global molecule index
    t_cur = torch.full((n_total,), -1, dtype=torch.long)  # fixed schedule (ITP/DDPM, tail): the next step
    in_tail = torch.zeros(n_total, dtype=torch.bool)
    reason = [STOP_CONVERGED] * n_total  # why the adaptive phase ended (kept through the tail)
    t0 = torch.full((n_total,), -1, dtype=torch.long)
    steps = torch.zeros(n_total, dtype=torch.long)
    best_t = torch.full((n_total,), T + 1, dtype=torch.long)  # lowest predicted step so far
    since_best = torch.zeros(n_total, dtype=torch.long)
    last_pred = torch.full((n_total,), -1, dtype=torch.long)  # last predicted step (AS/JT)
    restarts = torch.zeros(n_total, dtype=torch.long)
    traj_t: list[list[int]] = [[] for _ in range(n_total)]
    pending = list(range(n_total))[::-1]
    pool = _Pool(device)
    dtype = _model_dtype(model)
    noise_scale = float(o.noise_scale) if o.stochastic else 0.0
    tail_t = max(0, min(int(o.tail_t), T))
    eq_tail_t = max(0, min(int(o.eq_tail_t), T))
    tail_stride = max(1, -(-tail_t // int(o.tail_steps))) if int(o.tail_steps) > 0 else 1
    stride = torch.full((n_total,), tail_stride, dtype=torch.long)  # per molecule (tail_scale)

    def finish(k: int, x: np.ndarray, stop: str, t_final: int, error: str | None = None):
        pos = None if error is not None else x + centres[k]
        stop = STOP_ERROR if error is not None else stop
        results[k] = Relaxed(pos, int(t0[k]), int(steps[k]), stop in (STOP_CONVERGED, STOP_AT_EQUILIBRIUM),
                             int(t_final), traj_t[k], error, stop)

    if variant == "ddpm":
        t_cur[:] = int(o.t_start)
    elif variant == "itp":  # predict each molecule's step once, up front, in batches
        t_cur[:] = predict_steps(model, molecules, T, o.batch_size, device, dtype)

    while pending or len(pool):
        # refill the pool
        new = []
        while pending and len(pool) + len(new) < o.batch_size:
            k = pending.pop()
            z, x = molecules[k]
            new.append((k, np.asarray(z), np.asarray(x, np.float64) - centres[k]))
        pool.add(new)
        idx_m = pool.idx_m
        batch = pool.batch(dtype)
        mol = pool.mol
        fixed = in_tail[mol] if adaptive_variant else torch.ones(len(mol), dtype=torch.bool)
        with torch.no_grad():
            if adaptive_variant and not bool(fixed.all()):
                # noise conditioned on the model's own step prediction, or the tail's step (NaN = own)
                t_given = torch.where(fixed, t_cur[mol].double() / T, torch.full((len(mol),), float("nan"),
                                                                                    dtype=torch.float64))
                out = model(batch, None if not bool(fixed.any()) else t_given.to(device=device, dtype=dtype))
                t_hat = torch.where(fixed, t_cur[mol], _round_steps(out[P.t_pred], T))
                if int(o.t_floor) > 0:  # never below the fixed schedule t_floor, t_floor - 1, ...
                    floor = (int(o.t_floor) - steps[mol]).clamp(min=0)
                    lift = ~fixed & (floor > t_hat)
                    if bool(lift.any()):
                        t_hat = torch.where(lift, floor, t_hat)
                        # the lifted molecules' noise conditioned on the step used; the others keep theirs
                        eps = model(batch, (t_hat.double() / T).to(device=device, dtype=dtype))[P.eps_pred]
                        out = {**out, P.eps_pred: torch.where(lift.to(device)[idx_m, None], eps, out[P.eps_pred])}
            else:
                t_hat = t_cur[mol].clone()
                out = model(batch, (t_hat.double() / T).to(device=device, dtype=dtype))
        # a molecule whose step or noise prediction is not finite stops here with an error
        bad = (t_hat < 0) | ~_finite_per_molecule(out[P.eps_pred], idx_m, len(mol))
        t_hat = t_hat.clamp(min=0)
        first = t0[mol] == -1
        t0[mol[first]] = t_hat[first]
        for k, th in zip(mol.tolist(), t_hat.tolist()):
            traj_t[k].append(th)

        # who stops, and how each molecule moves: AS/JT in the adaptive phase stop when the
        # predicted step reaches t_conv, on a plateau, or at once when the input is already at
        # equilibrium; with a tail, the first two enter the tail instead.  Fixed schedules stop at 0.
        adaptive = ~fixed
        conv = torch.zeros(len(mol), dtype=torch.bool)
        enter_tail = torch.zeros(len(mol), dtype=torch.bool)
        at_eq = torch.zeros(len(mol), dtype=torch.bool)
        restart = torch.zeros(len(mol), dtype=torch.bool)
        if adaptive_variant and bool(adaptive.any()):
            last_pred[mol[adaptive]] = t_hat[adaptive]
            # at t_hat = 0 a step cannot move the molecule: it stops there whatever t_conv is
            at_conv = adaptive & (t_hat <= max(int(o.t_conv), 0))
            at_eq = adaptive & first & (t_hat <= int(o.t_eq))
            improved = t_hat < best_t[mol]
            best_t[mol] = torch.where(improved & adaptive, t_hat, best_t[mol])
            since_best[mol] = torch.where(improved, 0, since_best[mol] + 1)
            plateau = adaptive & ~at_conv & ~at_eq & (since_best[mol] >= int(o.patience)) if o.patience > 0 \
                else torch.zeros_like(adaptive)
            for j in torch.nonzero(at_conv | plateau | at_eq).flatten().tolist():
                reason[int(mol[j])] = (STOP_AT_EQUILIBRIUM if bool(at_eq[j]) else
                                       STOP_PLATEAU if bool(plateau[j]) else STOP_CONVERGED)
            if int(o.restart_patience) > 0:
                restart = (adaptive & ~at_conv & ~at_eq & (since_best[mol] >= int(o.restart_patience))
                           & (restarts[mol] < int(o.max_restarts)) & (t_hat < min(int(o.restart_t), T)))
                plateau = plateau & ~restart
            ending = (at_conv | plateau) & ~at_eq
            if tail_t > 0:
                enter_tail = ending
                conv = at_eq
            else:
                conv = ending | at_eq
            if eq_tail_t > 0:
                enter_tail = enter_tail | at_eq
                conv = conv & ~at_eq
        # the step each molecule moves to: the DDPM mean step t -> t-1, or a deterministic DDIM
        # jump t -> s (the tail, and the adaptive phase with jump > 0)
        s_next = (t_hat - 1).clamp(min=0)
        ddim = torch.zeros(len(mol), dtype=torch.bool)
        if adaptive_variant and float(o.jump) > 0:
            jumped = torch.floor(t_hat.double() * (1.0 - float(o.jump))).long().clamp(min=0)
            ddim = adaptive & ~conv
            s_next = torch.where(ddim, torch.minimum(jumped, s_next), s_next)
        if adaptive_variant:
            s_next = torch.where(fixed, (t_hat - stride[mol]).clamp(min=0), s_next)
            ddim = (ddim | fixed) & (t_hat > 0)
        move = (t_hat > 0) & (steps[mol] < o.max_steps) & ~bad & ~enter_tail  # max_steps = 0: predict t0 only
        tail = fixed & adaptive_variant  # the tail is deterministic; ITP/DDPM follow --stochastic
        scale = torch.where(conv | tail, 0.0, noise_scale).double()[..., None].to(device)[idx_m]
        x_new = reverse_step(pool.x, out[P.eps_pred], t_hat.to(device), idx_m, schedule, scale, generator=gen)
        if bool(ddim.any()):
            x_jump = ddim_step(pool.x, out[P.eps_pred], t_hat.to(device), s_next.to(device), idx_m, schedule)
            x_new = torch.where(ddim.to(device)[idx_m, None], x_jump, x_new)
        if o.final_step == "x0" and bool(conv.any()):  # converging: jump to the implied clean structure
            x0 = predict_x0(pool.x, out[P.eps_pred], t_hat.to(device), idx_m, schedule)
            x_new = torch.where(conv.to(device)[idx_m, None], x0, x_new)
        if bool(restart.any()):  # re-noise t_hat -> restart_t instead of a reverse step
            r_t = min(int(o.restart_t), T)
            ratio = (schedule.alpha_bar[r_t] / schedule.alpha_bar[t_hat.long().cpu()]).to(device)[idx_m, None]
            z = centred_noise(pool.x.shape, idx_m, generator=gen, dtype=torch.float64, device=device)
            x_new = torch.where(restart.to(device)[idx_m, None], ratio.sqrt() * pool.x.double()
                                + (1 - ratio).clamp(min=0).sqrt() * z, x_new.double()).to(x_new.dtype)
            move = move | (restart & (steps[mol] < o.max_steps) & ~bad)
            restarts[mol] += restart.long()
            best_t[mol] = torch.where(restart, T + 1, best_t[mol])
            since_best[mol] = torch.where(restart, 0, since_best[mol])
        pool.x = torch.where(move.to(device)[idx_m, None], x_new, pool.x)
        steps[mol] += move.long()
        if bool(enter_tail.any()):
            main = mol[enter_tail & ~at_eq]
            if float(o.tail_scale) > 0 and len(main):
                hi = max(tail_t, min(int(o.tail_t_max), T))
                start = torch.round(float(o.tail_scale) * t0[main].double()).long().clamp(tail_t, hi)
                t_cur[main] = start
                if int(o.tail_steps) > 0:
                    stride[main] = (-(-start // int(o.tail_steps))).clamp(min=1)
            else:
                t_cur[main] = tail_t
            t_cur[mol[enter_tail & at_eq]] = eq_tail_t
            in_tail[mol[enter_tail]] = True
        if adaptive_variant:
            t_cur[mol] = torch.where(fixed & move, s_next, t_cur[mol])
            conv = conv | (fixed & (t_cur[mol] <= 0))
        else:
            t_cur[mol] = torch.where(move, s_next, t_hat)
            conv = conv | (t_cur[mol] <= 0)
        bad = bad | ~_finite_per_molecule(pool.x, idx_m, len(mol))
        out_of_steps = steps[mol] >= o.max_steps
        done = conv | out_of_steps | bad
        if callback is not None:
            callback({"mol": mol.tolist(), "positions": [p.numpy() + centres[k] for k, p in zip(mol.tolist(), pool.split(pool.x))],
                      "t_hat": t_hat.tolist(), "n_done": int(done.sum())})
        if bool(done.any()):
            xs = pool.split(pool.x)
            for j in torch.nonzero(done).flatten().tolist():
                k = int(mol[j])
                if adaptive_variant:
                    stop = reason[k] if bool(conv[j]) else STOP_MAX_STEPS
                    t_fin = int(last_pred[k])
                else:
                    stop = STOP_CONVERGED if bool(conv[j]) else STOP_MAX_STEPS
                    t_fin = int(t_cur[k])
                err = (f"the model gave non-finite values after {int(steps[k])} steps" if bool(bad[j]) else None)
                finish(k, xs[j].numpy(), stop, t_fin, err)
            pool.keep(~done)
    return results  # type: ignore[return-value]


def ddpm(model, molecules, schedule, options, callback=None) -> list[Relaxed]:
    """DDPM reverse process (Ho et al. 2020) from a given step ``options.t_start`` down to 0."""
    if options.t_start is None:
        raise ValueError("the ddpm sampler needs options.t_start (the step the inputs are at)")
    if not 0 <= int(options.t_start) <= schedule.T:
        raise ValueError(f"t_start must be in 0..{schedule.T}, not {options.t_start}")
    return _run(model, molecules, schedule, options, "ddpm", callback)


def itp(model, molecules, schedule, options, callback=None) -> list[Relaxed]:
    """MoreRed-ITP (Kahouli et al. 2024): predict the step once, then t0, t0-1, ..., 1."""
    return _run(model, molecules, schedule, options, "itp", callback)


def adaptive(model, molecules, schedule, options, callback=None) -> list[Relaxed]:
    """MoreRed-AS / -JT (Kahouli et al. 2024): re-predict the step before every reverse step,
    stop when it is <= t_conv."""
    return _run(model, molecules, schedule, options, "as", callback)


SAMPLERS = {"ddpm": ddpm, "itp": itp, "as": adaptive, "jt": adaptive}

