"""Quick validation of generator weights on cached ``val`` pairs against the warp alone.

For each cached pair (a source frame and a target frame of one ``val`` clip, identities never
seen in training): the warp, and each model's output blended by its own mask (as compose
blends it), compared with the real target frame over the head region (labels other than
background): L1, PSNR and SSIM, and sharpness as the variance of the Laplacian of the face
crop relative to the real frame's. No history is given (a stream's first frame): the cached
history is built from real frames and would leak the answer.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator
from rt_portrait.generator.types import GeneratorInput
from rt_portrait.training.dataset import PairCache
from rt_portrait.training.losses import LAPLACIAN, ssim_map


@dataclass
class Method:
    name: str
    weights: Path | None  # None: the warp
    steps: int = 1
    motion_weight: float = 1.0
    identity_weight: float = 1.0
    detail: float = 0.0


def parse_method(spec: str) -> Method:
    """``PATH``, ``NAME=PATH``, ``NAME=PATH:STEPS`` or ``NAME=PATH:STEPS:MOTION_W:IDENTITY_W[:DETAIL]``."""
    name, _, rest = spec.partition("=") if "=" in spec else ("", "", spec)
    path, *opts = rest.split(":")
    p = Path(path)
    steps = int(opts[0]) if opts else 1
    mw = float(opts[1]) if len(opts) > 1 else 1.0
    iw = float(opts[2]) if len(opts) > 2 else 1.0
    detail = float(opts[3]) if len(opts) > 3 else 0.0
    return Method(name or p.parent.name or p.stem, p, steps, mw, iw, detail)


def pair_input(pair: dict[str, np.ndarray]) -> tuple[GeneratorInput, torch.Tensor]:
    def img(k: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pair[k])).float() / 255

    def f32(k: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pair[k])).float()

    fields = FlowFields(
        flow=f32("flow"),
        visibility=img("visibility"),
        depth=f32("depth"),
        normal=f32("normal"),
        labels=torch.from_numpy(np.ascontiguousarray(pair["labels"])).long(),
        encoding=f32("encoding"),
    )
    return GeneratorInput(warped=img("warped"), source=img("source"), fields=fields, history=None), img(
        "target"
    )


def sharpness(img: torch.Tensor, box: tuple[int, int, int, int]) -> float:
    y0, y1, x0, x1 = box
    gray = img[:, y0:y1, x0:x1].mean(0)[None, None]
    return float(F.conv2d(gray, LAPLACIAN[None, None]).var())


def metrics(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    m = mask.expand_as(pred)
    n = m.sum().clamp_min(1)
    l1 = float(((pred - target).abs() * m).sum() / n)
    mse = float((((pred - target) ** 2) * m).sum() / n)
    s = ssim_map(pred[None], target[None])[0]
    ys, xs = torch.nonzero(mask[0], as_tuple=True)
    box = (int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1)
    return {
        "l1": l1,
        "psnr": 10 * np.log10(1 / max(mse, 1e-10)),
        "ssim": float((s * m).sum() / n),
        "sharp": sharpness(pred, box) / max(sharpness(target, box), 1e-10),
    }


def evaluate(
    cache: PairCache, methods: list[Method], max_pairs: int = 120, sheet: Path | None = None
) -> dict[str, dict[str, float]]:
    from tqdm import tqdm

    idx = np.linspace(0, len(cache) - 1, min(max_pairs, len(cache))).round().astype(int)
    gens = {
        m.name: DiffusionGenerator(
            DiffusionConfig(
                weights=m.weights,
                steps=m.steps,
                motion_weight=m.motion_weight,
                identity_weight=m.identity_weight,
                detail=m.detail,
            )
        )
        for m in methods
        if m.weights is not None
    }
    rows: dict[str, list[dict[str, float]]] = {m.name: [] for m in methods}
    times: dict[str, list[float]] = {m.name: [] for m in methods}
    tiles: list[torch.Tensor] = []
    for k, i in enumerate(tqdm(idx, desc="evaluate", unit="pair")):
        inp, target = pair_input(cache.pair(int(i)))
        mask = (inp.fields.labels != 0).float()[None]
        if mask.sum() < 16:
            continue
        outs = {}
        for m in methods:
            if m.weights is None:
                out = inp.warped
            else:
                t0 = time.perf_counter()
                g = gens[m.name](inp)
                times[m.name].append(time.perf_counter() - t0)
                out = inp.warped * (1 - g.alpha) + g.face * g.alpha
            outs[m.name] = out
            rows[m.name].append(metrics(out, target, mask))
        if sheet is not None and k % max(1, len(idx) // 6) == 0 and len(tiles) < 6:
            tiles.append(torch.cat([inp.source, *outs.values(), target], dim=2))
    table = {}
    for name, r in rows.items():
        table[name] = {key: float(np.mean([x[key] for x in r])) for key in ("l1", "psnr", "ssim", "sharp")}
        table[name]["pairs"] = len(r)
        if times[name]:
            table[name]["ms"] = 1e3 * float(np.median(times[name]))
    if sheet is not None and tiles:
        from PIL import Image

        grid = torch.cat(tiles, dim=1).clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
        sheet.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(grid).save(sheet)
    return table


def format_table(table: dict[str, dict[str, float]]) -> str:
    base = table.get("warp")
    lines = [
        "| method | face L1 | face PSNR (dB) | ΔPSNR vs warp | face SSIM | sharpness / real | ms (1 thread) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, t in table.items():
        d = t["psnr"] - base["psnr"] if base else float("nan")
        ms = f"{t['ms']:.0f}" if "ms" in t else "-"
        lines.append(
            f"| {name} | {t['l1']:.4f} | {t['psnr']:.2f} | {d:+.2f} | {t['ssim']:.4f} | {t['sharp']:.2f} | {ms} |"
        )
    return "\n".join(lines)


def main(args: argparse.Namespace) -> None:
    from rt_portrait.training.cache import DEFAULT_CACHE

    torch.set_num_threads(args.threads)
    cache = PairCache(args.cache or DEFAULT_CACHE / "val-256")
    methods = [Method("warp", None)] + [parse_method(str(w)) for w in args.weights]
    table = evaluate(cache, methods, args.max_pairs, args.sheet)
    print(format_table(table))
    if args.out is not None:
        args.out.write_text(json.dumps(table, indent=1))
