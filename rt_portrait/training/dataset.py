"""Random training crops of cached pairs, with joint augmentation and the runtime's conditioning.

A batch is built in the training process (no worker processes: the CPU is scarce) from the
memory-mapped cache of :mod:`.cache`: a pair is drawn, a square crop placed around the head
(jittered), source and target augmented together (zoom, horizontal flip, colour gain and bias), the
history dropped out with probability ``history_dropout`` (a stream's first frame has none),
and the condition built by :func:`rt_portrait.generator.conditioning.build_condition`: the
same function the runtime calls, on the same fields, so there is no train/serve skew.

Every random draw comes from the ``numpy.random.Generator`` passed in, whose state the
trainer checkpoints: a resumed run draws the same batches.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.conditioning import build_condition
from rt_portrait.generator.types import GeneratorInput

PAIR_ARRAYS = ("warped", "target", "history", "visibility", "labels", "encoding", "depth", "normal", "flow")


@dataclass
class Batch:
    cond: torch.Tensor  # (B, C, S, S)
    warped: torch.Tensor  # (B, 3, S, S) in [0, 1]
    target: torch.Tensor  # (B, 3, S, S) in [0, 1]
    face: torch.Tensor  # (B, 1, S, S) 1 on the head (non-background labels)

    def to(self, device: torch.device | str) -> Batch:
        return Batch(
            self.cond.to(device), self.warped.to(device), self.target.to(device), self.face.to(device)
        )


@dataclass
class AugmentConfig:
    crop: int = 128
    flip: float = 0.5
    gain: float = 0.15  # per-channel colour gain in [1 - gain, 1 + gain]
    bias: float = 0.05
    history_dropout: float = 0.5
    jitter: float = 0.35  # crop-centre jitter around the head centre, as a fraction of the crop
    scale: float = 0.15  # zoom in [1 - scale, 1 + scale]: a region of crop / zoom px resized to crop


class PairCache:
    """The memory-mapped arrays of every clip of a cache folder (``<cache>/<split>-<size>``)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        clips = sorted(p.parent for p in self.root.glob("*/done"))
        if not clips:
            raise FileNotFoundError(
                f"no cached clips under {self.root} (run `python -m rt_portrait.training cache`)"
            )
        self.clips = [
            {k: np.load(c / f"{k}.npy", mmap_mode="r") for k in (*PAIR_ARRAYS, "source", "source_index")}
            for c in clips
        ]
        self.names = [c.name for c in clips]
        self.index = [(ci, pi) for ci, c in enumerate(self.clips) for pi in range(len(c["warped"]))]

    def __len__(self) -> int:
        return len(self.index)

    def pair(self, i: int) -> dict[str, np.ndarray]:
        ci, pi = self.index[i]
        c = self.clips[ci]
        out = {k: c[k][pi] for k in PAIR_ARRAYS}
        out["source"] = c["source"][int(c["source_index"][pi])]
        return out


def _crop_box(labels: np.ndarray, size: int, rng: np.random.Generator, jitter: float) -> tuple[int, int]:
    r = labels.shape[-1]
    if size >= r:
        return 0, 0
    ys, xs = np.nonzero(labels[::4, ::4])
    if len(ys):
        cy, cx = ys.mean() * 4, xs.mean() * 4
    else:
        cy = cx = r / 2
    cy += rng.uniform(-jitter, jitter) * size
    cx += rng.uniform(-jitter, jitter) * size
    y0 = int(np.clip(round(cy - size / 2), 0, r - size))
    x0 = int(np.clip(round(cx - size / 2), 0, r - size))
    return y0, x0


def make_sample(
    pair: dict[str, np.ndarray], aug: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, warped, target, face) of one augmented crop.

    Lengths in the fields are rescaled so the crop's condition matches the runtime's at the
    window size ``R`` of the cache: the conditioning divides depth by the tensor's side (the
    crop's, here), and a zoom makes every displacement and depth ``zoom`` times longer."""
    s = aug.crop
    window = int(pair["labels"].shape[-1])
    zoom = float(rng.uniform(1 - aug.scale, 1 + aug.scale)) if aug.scale > 0 else 1.0
    c = min(window, max(8, round(s / zoom)))  # the region to cut, resized to s
    zoom = s / c
    y0, x0 = _crop_box(np.asarray(pair["labels"]), c, rng, aug.jitter)
    sl = (Ellipsis, slice(y0, y0 + c), slice(x0, x0 + c))

    def img(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pair[name][sl])).float() / 255

    def f32(name: str) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(pair[name][sl])).float()

    warped, target, history, source = img("warped"), img("target"), img("history"), img("source")
    vis = img("visibility")
    labels = torch.from_numpy(np.ascontiguousarray(pair["labels"][sl])).long()
    enc, depth, normal, flow = f32("encoding"), f32("depth"), f32("normal"), f32("flow")
    if c != s:
        warped, target, history, source, vis, enc, depth, normal, flow = _resize(
            (warped, target, history, source, vis, enc, depth, normal, flow), s
        )
        labels = F.interpolate(labels[None, None].float(), size=(s, s), mode="nearest")[0, 0].long()
    enc.view(4, 4, s, s)[:, :3].mul_(zoom)  # each candidate's u, v and depth offset, in window units
    flow.mul_(zoom)  # working px
    depth.mul_(zoom * s / window)  # the conditioning divides by s; the runtime by the window
    if rng.random() < aug.flip:
        warped, target, history, source, vis, enc, depth, normal, flow = (
            t.flip(-1) for t in (warped, target, history, source, vis, enc, depth, normal, flow)
        )
        labels = labels.flip(-1)
        enc[0::4] = -enc[0::4]  # candidate flow u
        flow[0] = -flow[0]
        normal[0] = -normal[0]
    gain = torch.from_numpy(rng.uniform(1 - aug.gain, 1 + aug.gain, 3).astype(np.float32))[:, None, None]
    bias = torch.from_numpy(rng.uniform(-aug.bias, aug.bias, 3).astype(np.float32))[:, None, None]
    warped, target, history, source = (
        (t * gain + bias).clamp(0, 1) for t in (warped, target, history, source)
    )
    fields = FlowFields(flow=flow, visibility=vis, depth=depth, normal=normal, labels=labels, encoding=enc)
    has_history = rng.random() >= aug.history_dropout
    inputs = GeneratorInput(
        warped=warped, source=source, fields=fields, history=history if has_history else None
    )
    cond = build_condition(inputs)
    face = (labels != 0).float()[None]
    return cond, warped, target, face


def _resize(tensors: tuple[torch.Tensor, ...], size: int) -> list[torch.Tensor]:
    """Each (C, H, W) tensor resized to (C, size, size), bilinear with antialiasing."""
    return [
        F.interpolate(t[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
        for t in tensors
    ]


def make_batch(cache: PairCache, batch: int, aug: AugmentConfig, rng: np.random.Generator) -> Batch:
    idx = rng.integers(0, len(cache), size=batch)
    samples = [make_sample(cache.pair(int(i)), aug, rng) for i in idx]
    return Batch(*(torch.stack(t) for t in zip(*samples, strict=True)))


def write_synthetic_cache(root: str | Path, pairs: int = 4, size: int = 64, seed: int = 0) -> Path:
    """A tiny cache with the real layout and a learnable task (tests, smoke runs): the target is
    the warp brightened inside a disc-shaped "head" whose geometry the fields describe."""
    rng = np.random.default_rng(seed)
    dest = Path(root) / "clip0"
    dest.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    out: dict[str, list[np.ndarray]] = {k: [] for k in PAIR_ARRAYS}
    for _ in range(pairs):
        cy, cx = rng.uniform(0.35, 0.65, 2) * size
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2) < (0.25 * size) ** 2
        base = rng.uniform(0.2, 0.6, (3, 1, 1)) + 0.1 * np.sin(xx / 5.0)[None]
        warped = np.clip(base, 0, 1)
        target = np.clip(warped + 0.3 * disc[None], 0, 1)
        out["warped"].append((warped * 255).round().astype(np.uint8))
        out["target"].append((target * 255).round().astype(np.uint8))
        out["history"].append((target * 255).round().astype(np.uint8))
        out["visibility"].append((255 * (~disc))[None].astype(np.uint8))
        out["labels"].append(disc.astype(np.uint8))
        out["encoding"].append(np.zeros((16, size, size), np.float16))
        out["depth"].append(np.where(disc, 0.0, size)[None].astype(np.float16))
        out["normal"].append(np.zeros((3, size, size), np.float16))
        out["flow"].append(np.zeros((2, size, size), np.float16))
    for k, v in out.items():
        np.save(dest / f"{k}.npy", np.stack(v))
    np.save(dest / "source.npy", np.stack(out["warped"][:1]))
    np.save(dest / "source_index.npy", np.zeros(pairs, np.int32))
    (dest / "done").write_text("{}")
    return Path(root)
