"""Random training crops of cached pairs, with joint augmentation and the runtime's conditioning.

A batch is built in the training process (no worker processes: the CPU is scarce) from the
memory-mapped cache of :mod:`.cache`: a pair is drawn, a square crop placed around the head
(jittered), source and target augmented together (zoom, horizontal flip, colour gain and bias), the
history dropped out with probability ``history_dropout`` (a stream's first frame has none),
and the condition built by :func:`rt_portrait.generator.conditioning.build_condition`: the
same function the runtime calls, on the same fields, so there is no train/serve skew.

Every random draw comes from the ``numpy.random.Generator`` passed in, whose state the
trainer checkpoints: a resumed run draws the same batches.

On a GPU the per-sample Python above is the bottleneck (~28 ms a sample), so there is a
batched twin: :class:`DeviceCache` holds every pair on the device and
:func:`make_batch_device` builds a whole batch there with a few gathers, one affine
``grid_sample`` and :func:`~rt_portrait.generator.conditioning.build_condition_batched` (the
same channel code as the runtime's). Both paths split drawing the random parameters
(:class:`SampleParams`, :class:`BatchParams`) from applying them, so the same parameters can
be applied by both and compared. The batched resize is bilinear without antialiasing (the
CPU path antialiases), so zoomed crops agree closely, not exactly; unzoomed ones agree exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from rt_portrait.flow.types import FlowFields
from rt_portrait.generator.conditioning import build_condition, build_condition_batched
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


def _head_centre(labels: np.ndarray) -> tuple[float, float]:
    """(y, x) of the head: the mean of the labelled pixels on a 4x-subsampled grid, or the
    window's centre when nothing is labelled."""
    ys, xs = np.nonzero(labels[::4, ::4])
    if len(ys):
        return float(ys.mean() * 4), float(xs.mean() * 4)
    r = labels.shape[-1]
    return r / 2, r / 2


def _crop_box(labels: np.ndarray, size: int, rng: np.random.Generator, jitter: float) -> tuple[int, int]:
    r = labels.shape[-1]
    if size >= r:
        return 0, 0
    cy, cx = _head_centre(labels)
    cy += rng.uniform(-jitter, jitter) * size
    cx += rng.uniform(-jitter, jitter) * size
    y0 = int(np.clip(round(cy - size / 2), 0, r - size))
    x0 = int(np.clip(round(cx - size / 2), 0, r - size))
    return y0, x0


@dataclass(frozen=True)
class SampleParams:
    """The random draws of one augmented crop, apart from applying them (so the CPU and the
    batched paths can be given the same ones)."""

    side: int  # the square region cut from the window, resized to the crop; zoom = crop / side
    y0: int
    x0: int
    flip: bool
    gain: np.ndarray  # (3,) float32 per-channel gain of the four images
    bias: np.ndarray  # (3,) float32
    history: bool  # whether the history is kept (else dropped out)


def draw_sample(labels: np.ndarray, aug: AugmentConfig, rng: np.random.Generator) -> SampleParams:
    """The parameters of one crop of a pair with these labels; draws from ``rng`` in the order
    :func:`make_sample` always has (zoom, box, flip, gain, bias, history), so resumed runs
    draw the batches they drew before."""
    s = aug.crop
    window = int(labels.shape[-1])
    zoom = float(rng.uniform(1 - aug.scale, 1 + aug.scale)) if aug.scale > 0 else 1.0
    c = min(window, max(8, round(s / zoom)))  # the region to cut, resized to s
    y0, x0 = _crop_box(labels, c, rng, aug.jitter)
    flip = bool(rng.random() < aug.flip)
    gain = rng.uniform(1 - aug.gain, 1 + aug.gain, 3).astype(np.float32)
    bias = rng.uniform(-aug.bias, aug.bias, 3).astype(np.float32)
    history = bool(rng.random() >= aug.history_dropout)
    return SampleParams(c, y0, x0, flip, gain, bias, history)


@dataclass
class Crop:
    """Augmented images and fields before conditioning: (C, S, S) each and labels (S, S) for
    one sample, or all with a leading batch dim (``history_valid`` then a (B,) bool)."""

    warped: torch.Tensor
    target: torch.Tensor
    history: torch.Tensor
    source: torch.Tensor
    visibility: torch.Tensor
    encoding: torch.Tensor
    depth: torch.Tensor
    normal: torch.Tensor
    flow: torch.Tensor
    labels: torch.Tensor  # int64 Region values
    history_valid: bool | torch.Tensor


def crop_sample(pair: dict[str, np.ndarray], p: SampleParams, aug: AugmentConfig) -> Crop:
    """One pair cut, resized, rescaled, flipped and colour-jittered as ``p`` says.

    Lengths in the fields are rescaled so the crop's condition matches the runtime's at the
    window size ``R`` of the cache: the conditioning divides depth by the tensor's side (the
    crop's, here), and a zoom makes every displacement and depth ``zoom`` times longer."""
    s, c = aug.crop, p.side
    window = int(pair["labels"].shape[-1])
    zoom = s / c
    sl = (Ellipsis, slice(p.y0, p.y0 + c), slice(p.x0, p.x0 + c))

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
    if p.flip:
        warped, target, history, source, vis, enc, depth, normal, flow = (
            t.flip(-1) for t in (warped, target, history, source, vis, enc, depth, normal, flow)
        )
        labels = labels.flip(-1)
        enc[0::4] = -enc[0::4]  # candidate flow u
        flow[0] = -flow[0]
        normal[0] = -normal[0]
    gain = torch.from_numpy(p.gain)[:, None, None]
    bias = torch.from_numpy(p.bias)[:, None, None]
    warped, target, history, source = (
        (t * gain + bias).clamp(0, 1) for t in (warped, target, history, source)
    )
    return Crop(warped, target, history, source, vis, enc, depth, normal, flow, labels, p.history)


def apply_sample(
    pair: dict[str, np.ndarray], p: SampleParams, aug: AugmentConfig
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, warped, target, face) of the crop ``p`` describes, conditioned by the runtime's
    :func:`build_condition`."""
    k = crop_sample(pair, p, aug)
    fields = FlowFields(
        flow=k.flow,
        visibility=k.visibility,
        depth=k.depth,
        normal=k.normal,
        labels=k.labels,
        encoding=k.encoding,
    )
    inputs = GeneratorInput(
        warped=k.warped, source=k.source, fields=fields, history=k.history if k.history_valid else None
    )
    cond = build_condition(inputs)
    face = (k.labels != 0).float()[None]
    return cond, k.warped, k.target, face


def make_sample(
    pair: dict[str, np.ndarray], aug: AugmentConfig, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(cond, warped, target, face) of one augmented crop (see :func:`crop_sample`)."""
    return apply_sample(pair, draw_sample(np.asarray(pair["labels"]), aug, rng), aug)


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


# Channel layout of DeviceCache: uint8 images (/255) then float16 fields, channels last.
_U8 = (("warped", 3), ("target", 3), ("history", 3), ("source", 3), ("visibility", 1))
_F16 = (("encoding", 16), ("depth", 1), ("normal", 3), ("flow", 2))


class DeviceCache:
    """Every pair of a :class:`PairCache` stacked on one device, for :func:`make_batch_device`.

    ``images`` (N, R, R, 13) uint8: warped, target, history, the pair's source (gathered by
    ``source_index``), visibility; ``fields`` (N, R, R, 22) float16: encoding, depth, normal,
    flow; ``labels`` (N, R, R) uint8. Channels last, so that cutting a batch of crops is one
    gather per tensor. ``centre`` (N, 2) float64 (y, x) is each pair's head centre as
    :func:`_crop_box` computes it, on the CPU (where the parameters are drawn). About 3.8 MB a
    pair at R = 256."""

    def __init__(self, cache: PairCache, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        n = len(cache)
        r = int(cache.clips[0]["labels"].shape[-1])
        self.window = r
        self.images = torch.empty(n, r, r, sum(c for _, c in _U8), dtype=torch.uint8, device=self.device)
        self.fields = torch.empty(n, r, r, sum(c for _, c in _F16), dtype=torch.float16, device=self.device)
        self.labels = torch.empty(n, r, r, dtype=torch.uint8, device=self.device)
        centres: list[tuple[float, float]] = []
        i = 0
        for clip in cache.clips:  # the order of cache.index: clip by clip, pair by pair
            m = len(clip["warped"])
            if clip["labels"].shape[-1] != r:
                raise ValueError(
                    f"clips of {cache.root} differ in window size ({clip['labels'].shape[-1]} != {r})"
                )
            arrays = {k: np.asarray(clip[k]) for k in PAIR_ARRAYS}
            arrays["source"] = np.asarray(clip["source"])[np.asarray(clip["source_index"]).astype(np.int64)]
            for dest, names in ((self.images, _U8), (self.fields, _F16)):
                stacked = np.concatenate([arrays[k] for k, _ in names], axis=1)  # (m, C, R, R)
                dest[i : i + m].copy_(torch.from_numpy(stacked).permute(0, 2, 3, 1))
            self.labels[i : i + m].copy_(torch.from_numpy(np.array(arrays["labels"])))
            centres += [_head_centre(lab) for lab in arrays["labels"]]
            i += m
        self.centre = torch.tensor(centres, dtype=torch.float64).reshape(n, 2)

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class BatchParams:
    """:class:`SampleParams` of a batch as (B,) tensors, with the pair each sample cuts."""

    index: torch.Tensor  # (B,) int64 pair index into the cache
    side: torch.Tensor  # (B,) int64
    y0: torch.Tensor  # (B,) int64
    x0: torch.Tensor  # (B,) int64
    flip: torch.Tensor  # (B,) bool
    gain: torch.Tensor  # (B, 3) float32
    bias: torch.Tensor  # (B, 3) float32
    history: torch.Tensor  # (B,) bool

    @staticmethod
    def stack(index: Sequence[int], samples: Sequence[SampleParams]) -> BatchParams:
        """The batch of these per-sample parameters (e.g. drawn by :func:`draw_sample`)."""

        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(p, name) for p in samples], dtype=dtype)

        return BatchParams(
            index=torch.tensor(list(index), dtype=torch.int64),
            side=col("side", torch.int64),
            y0=col("y0", torch.int64),
            x0=col("x0", torch.int64),
            flip=col("flip", torch.bool),
            gain=torch.from_numpy(np.stack([p.gain for p in samples])).float(),
            bias=torch.from_numpy(np.stack([p.bias for p in samples])).float(),
            history=col("history", torch.bool),
        )

    def to(self, device: torch.device | str) -> BatchParams:
        return BatchParams(
            *(
                getattr(self, k).to(device)
                for k in ("index", "side", "y0", "x0", "flip", "gain", "bias", "history")
            )
        )


def draw_batch_params(dc: DeviceCache, batch: int, aug: AugmentConfig, gen: torch.Generator) -> BatchParams:
    """The parameters of ``batch`` crops with :func:`draw_sample`'s distributions, drawn from
    ``gen`` on its device (a CPU generator keeps the device free of syncs: the draws are a few
    hundred numbers)."""
    dev, s, r = gen.device, aug.crop, dc.window

    def uniform(lo: float, hi: float, *shape: int) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=gen, dtype=torch.float64, device=dev)

    index = torch.randint(0, len(dc), (batch,), generator=gen, device=dev)
    zoom = uniform(1 - aug.scale, 1 + aug.scale, batch) if aug.scale > 0 else torch.ones(batch, device=dev)
    side = torch.round(s / zoom.double()).clamp(min=8, max=r).long()  # min(r, max(8, round(s / zoom)))
    c = side.double()[:, None]
    centre = dc.centre.to(dev)[index] + uniform(-aug.jitter, aug.jitter, batch, 2) * c
    origin = torch.round(centre - c / 2).long().clamp(min=0).minimum(r - side[:, None])
    flip = torch.rand(batch, generator=gen, device=dev) < aug.flip
    gain = uniform(1 - aug.gain, 1 + aug.gain, batch, 3).float()
    bias = uniform(-aug.bias, aug.bias, batch, 3).float()
    history = torch.rand(batch, generator=gen, device=dev) >= aug.history_dropout
    return BatchParams(index, side, origin[:, 0], origin[:, 1], flip, gain, bias, history)


def crop_batch(dc: DeviceCache, p: BatchParams, aug: AugmentConfig) -> Crop:
    """:func:`crop_sample` of a whole batch on ``dc``'s device: one gather of a square patch
    per sample (flipped by the gather), one affine bilinear ``grid_sample`` to the crop size
    when any sample is zoomed, labels by a nearest-index gather that picks the pixels
    ``F.interpolate(mode="nearest")`` picks on the CPU path."""
    s, r, b = aug.crop, dc.window, len(p.index)
    cm = int(p.side.max())  # the largest region; host values, read before moving the params
    zoomed = bool((p.side != s).any())
    p = p.to(dc.device)
    dev = dc.device

    ar = torch.arange(cm, device=dev)
    yb = p.y0.clamp(max=r - cm)  # a cm patch holding every sample's region
    xb = p.x0.clamp(max=r - cm)
    rows = (yb[:, None] + ar)[:, :, None]
    cols = (xb[:, None] + torch.where(p.flip[:, None], cm - 1 - ar, ar))[:, None, :]
    i = p.index[:, None, None]
    x = torch.empty(b, cm, cm, dc.images.shape[-1] + dc.fields.shape[-1], device=dev)
    nu8 = dc.images.shape[-1]
    x[..., :nu8].copy_(dc.images[i, rows, cols]).div_(255)  # as the CPU path's .float() / 255
    x[..., nu8:].copy_(dc.fields[i, rows, cols])
    x = x.permute(0, 3, 1, 2)  # (B, 35, cm, cm), channels last in memory
    if zoomed:
        c = p.side.double()
        oy = (p.y0 - yb).double()
        ox = torch.where(p.flip, cm - c - (p.x0 - xb).double(), (p.x0 - xb).double())
        theta = torch.zeros(b, 2, 3, dtype=torch.float64, device=dev)
        theta[:, 0, 0] = theta[:, 1, 1] = c / cm
        theta[:, 0, 2] = (c + 2 * ox) / cm - 1
        theta[:, 1, 2] = (c + 2 * oy) / cm - 1
        grid = F.affine_grid(theta.float(), [b, x.shape[1], s, s], align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    else:
        x = x.contiguous()

    enc, depth, normal, flow = torch.split(x[:, nu8:], [c for _, c in _F16], dim=1)
    zoom = s / p.side.double()
    enc.view(b, 4, 4, s, s)[:, :, :3].mul_(zoom.float()[:, None, None, None, None])
    flow.mul_(zoom.float()[:, None, None, None])
    depth.mul_((zoom * s / r).float()[:, None, None, None])
    sign = 1 - 2 * p.flip.float()[:, None, None]
    enc[:, 0::4].mul_(sign[:, None])
    flow[:, 0].mul_(sign)
    normal[:, 0].mul_(sign)
    images = x[:, : nu8 - 1].reshape(b, 4, 3, s, s)  # the four RGB images, then visibility
    images = (images * p.gain[:, None, :, None, None] + p.bias[:, None, :, None, None]).clamp(0, 1)
    warped, target, history, source = (images[:, k] for k in range(4))
    vis = x[:, nu8 - 1 : nu8]

    j = torch.arange(s, device=dev)
    side = p.side[:, None]
    near = torch.minimum((j.float() * (side.float() / s)).floor().long(), side - 1)  # (B, S)
    near_flip = torch.minimum(((s - 1 - j).float() * (side.float() / s)).floor().long(), side - 1)
    lrows = (p.y0[:, None] + near)[:, :, None]
    lcols = (p.x0[:, None] + torch.where(p.flip[:, None], near_flip, near))[:, None, :]
    labels = dc.labels[i, lrows, lcols].long()
    return Crop(warped, target, history, source, vis, enc, depth, normal, flow, labels, p.history)


def apply_batch(dc: DeviceCache, p: BatchParams, aug: AugmentConfig) -> Batch:
    """The batch ``p`` describes, conditioned by the shared channel code of the runtime."""
    k = crop_batch(dc, p, aug)
    assert isinstance(k.history_valid, torch.Tensor)
    cond = build_condition_batched(
        k.warped, k.source, k.visibility, k.encoding, k.depth, k.normal, k.labels, k.history, k.history_valid
    )
    face = (k.labels != 0).float()[:, None]
    return Batch(cond, k.warped.contiguous(), k.target.contiguous(), face)


def make_batch_device(dc: DeviceCache, batch: int, aug: AugmentConfig, gen: torch.Generator) -> Batch:
    """What :func:`make_batch` builds, built batched on ``dc``'s device from ``gen``'s draws
    (checkpoint ``gen``'s state to resume the same batches)."""
    return apply_batch(dc, draw_batch_params(dc, batch, aug, gen), aug)


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
