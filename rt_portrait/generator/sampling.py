"""Noise schedule and samplers: pure functions with one signature, in the k-diffusion way.

Formulation: flow matching (rectified flow) on a sample ``x0`` (for the diffusion
generator: the residual over the warp):

    x_t = (1 - t) * x0 + t * eps,   eps ~ N(0, I),   t in [0, 1]   (t = 1: pure noise)
    v   = dx_t/dt = eps - x0                                       (what the model predicts)

so ``x0 = x_t - t * v``. A sampler integrates dx/dt = v from t = 1 to t = 0 over a
decreasing grid of times. Every sampler has the signature

    sampler(model_fn, x_T, timesteps, cond) -> x0

where ``model_fn(x, t, cond) -> v`` takes ``x`` (B, ...), ``t`` (B,) and the condition.

Fusion (multi-condition guidance, as the signal fusion of Stable Video-Driven Portraits;
:func:`fused_model_fn`): with ``v`` the full-condition prediction, ``v_m`` the prediction with
the motion group dropped and ``v_i`` with the identity group dropped,

    v_fused = v + (w_motion - 1) * (v - v_m) + (w_identity - 1) * (v - v_i)

``w = 1`` leaves a group as trained (and costs no extra forward pass); ``w > 1`` pushes the
sample further along what that group contributes (motion fidelity, or likeness to the
source), ``w < 1`` weakens it. Both weights 1: the plain conditional model, one forward.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
CondDropFn = Callable[[torch.Tensor, str], torch.Tensor]


def schedule(steps: int, shift: float = 1.0, device: torch.device | str = "cpu") -> torch.Tensor:
    """(steps + 1,) decreasing times from 1 to 0. ``shift`` > 1 spends more steps at high noise
    (t' = shift t / (1 + (shift - 1) t), as in SD3); 1 = uniform."""
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    t = torch.linspace(1.0, 0.0, steps + 1, device=device)
    return shift * t / (1 + (shift - 1) * t)


def interpolate(x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - t) x0 + t eps, with t (B,) broadcast over the sample's other dimensions."""
    tt = t.reshape(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - tt) * x0 + tt * eps


def velocity_to_x0(x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return x_t - t.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype) * v


def x0_to_velocity(x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """v = (x_t - x0) / t: the velocity of a model that predicts the clean sample. An Euler
    step with it is x_t' = (t'/t) x_t + (1 - t'/t) x0 (the DDIM update), stable for any step;
    samplers never evaluate t = 0."""
    tt = t.reshape(-1, *([1] * (x_t.ndim - 1))).to(x_t.dtype).clamp_min(1e-4)
    return (x_t - x0) / tt


def _times(t: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    return torch.full((x.shape[0],), float(t), device=x.device, dtype=torch.float32)


def sample_euler(
    model_fn: ModelFn, x_T: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """Euler steps of dx/dt = v over ``timesteps`` (decreasing, from 1 to 0). One step from
    t = 1 is x0 = eps - v(eps, 1)."""
    x = x_T
    for i in range(len(timesteps) - 1):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        v = model_fn(x, _times(t, x), cond)
        x = x + (t_next - t) * v
    return x


def sample_heun(
    model_fn: ModelFn, x_T: torch.Tensor, timesteps: torch.Tensor, cond: torch.Tensor
) -> torch.Tensor:
    """Heun (2nd order) steps; the last step to t = 0 is an Euler step (2 NFE per step otherwise)."""
    x = x_T
    for i in range(len(timesteps) - 1):
        t, t_next = float(timesteps[i]), float(timesteps[i + 1])
        v = model_fn(x, _times(t, x), cond)
        x_e = x + (t_next - t) * v
        if t_next == 0.0:
            x = x_e
            continue
        v2 = model_fn(x_e, _times(t_next, x), cond)
        x = x + (t_next - t) * 0.5 * (v + v2)
    return x


SAMPLERS: dict[str, Callable[[ModelFn, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "euler": sample_euler,
    "heun": sample_heun,
}


def fused_model_fn(
    model_fn: ModelFn, drop: CondDropFn, motion_weight: float = 1.0, identity_weight: float = 1.0
) -> ModelFn:
    """``model_fn`` with the motion/identity fusion of the module docstring.

    ``drop(cond, group)`` returns ``cond`` with one group ("motion" or "identity") removed.
    The extra predictions run in the same batch as the full one (one forward of 1-3x the batch).
    """
    if motion_weight == 1.0 and identity_weight == 1.0:
        return model_fn

    def fused(x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        conds, weights = [cond], []
        if motion_weight != 1.0:
            conds.append(drop(cond, "motion"))
            weights.append(motion_weight - 1.0)
        if identity_weight != 1.0:
            conds.append(drop(cond, "identity"))
            weights.append(identity_weight - 1.0)
        n = len(conds)
        out = model_fn(torch.cat([x] * n), torch.cat([t] * n), torch.cat(conds)).chunk(n)
        v = out[0]
        fusedv = v.clone()
        for w, v_drop in zip(weights, out[1:], strict=True):
            fusedv = fusedv + w * (v - v_drop)
        return fusedv

    return fused
