"""How much of the generator's error is misplaced texture: an oracle displacement per pair.

For cached ``val`` pairs, the base a ``warp_fill`` model starts from (the filled warp) and
the shipped model's output are each displaced by a smooth field (a 32 x 32 grid, bilinear up
to the working size, at most 4 px) fitted *to the real target* (L1 over the head, 60 Adam
steps), and scored before and after on the head (L1, PSNR, SSIM, sharpness, as
``python -m rt_portrait.training evaluate`` scores). The gap is an upper bound on what a
displacing model (``UNetConfig.flow_channels``) could gain from the condition alone:

    python scripts/displacement_oracle.py [--pairs 40] [--cache ~/.cache/rt-portrait/gen-cache/val-256]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.core.fill import warp_batch
from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator
from rt_portrait.training.cache import DEFAULT_CACHE
from rt_portrait.training.dataset import PairCache
from rt_portrait.training.evaluate import metrics, pair_input


def fit_displacement(
    image: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, grid: int = 32
) -> torch.Tensor:
    """``image`` (3, R, R) displaced by the smooth field that best matches ``target`` on ``mask``."""
    r = image.shape[-1]
    d = torch.zeros(1, 2, grid, grid, requires_grad=True)
    opt = torch.optim.Adam([d], lr=0.3)

    def displaced() -> torch.Tensor:
        field = F.interpolate(d, size=(r, r), mode="bilinear", align_corners=False)
        return warp_batch(image[None], field)[0]

    for _ in range(60):
        loss = ((displaced() - target).abs() * mask).sum() / mask.sum() + 1e-3 * (d**2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            d.clamp_(-4, 4)
    with torch.no_grad():
        return displaced()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE / "val-256")
    p.add_argument("--pairs", type=int, default=40)
    p.add_argument("--weights", type=Path, default=None, help="a warp_fill model (default: the shipped one)")
    args = p.parse_args()
    torch.set_num_threads(2)
    cache = PairCache(args.cache)
    gen = DiffusionGenerator(DiffusionConfig(weights=args.weights))
    if gen.base not in ("warp_fill", "warp_mirror"):
        raise SystemExit(
            "the oracle compares against the filled warp: give a warp_fill or warp_mirror model (metadata base)"
        )
    rows: dict[str, list[dict[str, float]]] = {
        k: [] for k in ("base", "base displaced", "model", "model displaced")
    }
    for i in np.linspace(0, len(cache) - 1, min(args.pairs, len(cache))).round().astype(int):
        inp, target = pair_input(cache.pair(int(i)))
        mask = (inp.fields.labels != 0).float()[None]
        if mask.sum() < 16:
            continue
        base = gen.with_base([inp])[0].warped
        out = gen(inp)
        model = base * (1 - out.alpha) + out.face * out.alpha
        for name, img in (("base", base), ("model", model)):
            rows[name].append(metrics(img, target, mask))
            rows[f"{name} displaced"].append(metrics(fit_displacement(img, target, mask), target, mask))
    print("| image | face L1 | PSNR | SSIM | sharpness |\n|---|---|---|---|---|")
    for name, r in rows.items():
        m = {k: float(np.mean([x[k] for x in r])) for k in ("l1", "psnr", "ssim", "sharp")}
        print(f"| {name} | {m['l1']:.4f} | {m['psnr']:.2f} | {m['ssim']:.4f} | {m['sharp']:.2f} |")


if __name__ == "__main__":
    main()
