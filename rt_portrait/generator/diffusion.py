"""The diffusion generator: conditioning -> sampler -> face and blend mask.

It implements the :class:`~rt_portrait.generator.types.Generator` protocol with the UNet of
:mod:`.unet`, the conditioning of :mod:`.conditioning` and the samplers of :mod:`.sampling`.

What the model predicts: the *residual over the warp*, ``x0 = residual_scale * (target -
warped)`` in [-1, 1] image units, by flow matching, with the network predicting the clean
sample ``x0`` from ``x_t`` (the sampler's velocity is ``(x_t - x0) / t``). Predicting ``x0``
rather than ``v = eps - x0`` keeps one-step outputs clean: with ``v`` the model must cancel
the unit-variance noise exactly, and a small, briefly trained model leaves it as grain (the
first CPU run showed 18x the real frame's Laplacian variance after 800 steps). Why the
residual rather than the image:

- the warp is already right on most of the face (near-frontal talking scores well); a
  residual model spends its capacity only on what the warp gets wrong (revealed cheeks and
  hair, mouth interiors, ghosts), which matters with the tiny, CPU-trained model;
- a weak or untrained model degrades gracefully to the warp (the UNet's last layer starts at
  zero, so an untrained one returns exactly the warp), never to noise or a colour shift;
- the residual is near zero almost everywhere, so one or two sampling steps suffice.

Weights: one safetensors file holding the UNet's tensors, with metadata ``unet_config``
(JSON of :class:`~rt_portrait.generator.unet.UNetConfig`), ``residual_scale`` and
``prediction`` (``sample``: a flow-matching model predicting x0, sampled from noise;
``velocity``: one predicting v; ``regression``: a plain regression model, one forward from
zeros, the ablation of the model card).

Determinism: the starting noise is drawn once per working size from ``seed`` (the same noise
every frame, which also keeps the output temporally stable).
"""

from __future__ import annotations

import copy
import json
import threading
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from rt_portrait.core.cpu import auto_dtype, casts_weights
from rt_portrait.core.fill import gaussian_blur, warp_batch, warp_working
from rt_portrait.core.types import Region
from rt_portrait.generator.conditioning import NUM_CHANNELS, build_condition_batch, drop_groups
from rt_portrait.generator.mouth import MOUTH_STYLES, MouthPaint
from rt_portrait.generator.sampling import SAMPLERS, fused_model_fn, schedule, x0_to_velocity
from rt_portrait.generator.source_detail import SOURCE_DETAIL, detail_sigma, split_detail
from rt_portrait.generator.texture import TEXTURE_GAIN, match_warp_texture
from rt_portrait.generator.types import GeneratorInput, GeneratorOutput
from rt_portrait.generator.unet import ConditionalUNet, UNetConfig
from rt_portrait.generator.warp_fill import WarpFillGenerator

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
# The shipped 1-step weights: the best 1-step model of the CPU runs (see weights/MODEL_CARD.md:
# there, the flow-matching teacher sampled in one step; the distilled students scored lower).
# A 2-step or teacher file, when present, takes precedence for those step counts.
DEFAULT_WEIGHTS = WEIGHTS_DIR / "generator_1step.safetensors"
STUDENT2_WEIGHTS = WEIGHTS_DIR / "generator_2step.safetensors"
TEACHER_WEIGHTS = WEIGHTS_DIR / "generator_teacher.safetensors"
REGRESSION_WEIGHTS = WEIGHTS_DIR / "generator_regression.safetensors"  # the ablation (no noise)
TEACHER_STEPS = 16
WEIGHTS_FORMAT = "rt-portrait-generator-v1"
PREDICTIONS = ("sample", "velocity", "regression")
# What the residual is added to (metadata ``base``): the raw warp, or the warp with its holes
# filled by the learning-free generator (``warp_fill``). The raw warp shows, where the source
# hides the target's surface, whatever hid it (a ghost of the nose, an eye or the old
# jawline), which a small model's residual has to cancel pixel for pixel; the filled warp
# starts from hair, skin and the mean open mouth there instead. ``warp_fill`` fills hair and
# background by push-pull averages (the fill before session 12, which the shipped weights were
# trained on); ``warp_mirror`` by reflecting the texture beside them (today's warp fill). A
# model is always given the base it was trained on.
BASES = ("warp", "warp_fill", "warp_mirror")


def base_fill(base: str, mouth: str = "strips") -> WarpFillGenerator | None:
    """The learning-free generator that fills a model's residual base, or None for the raw
    warp; ``mouth``: the mouth style (``generator.mouth.MOUTH_STYLES``) it paints an opened
    mouth in (``strips`` for files from before session 13, which do not record one)."""
    if base not in BASES:
        raise ValueError(f"unknown residual base {base!r}; expected one of {BASES}")
    if base == "warp":
        return None
    # the fill as these bases were trained on: before session 16 every shell and background
    # pixel the source shows was kept, however stretched (WarpFillGenerator.stretch_at), and
    # before session 17 the face kept the warp where the source hid it (mirror_face). Except
    # the wall: unseen background that samples the source's head is filled from the wall beside
    # it, as by the warp fill since session 21 (the bases were trained keeping it, but the old
    # head left beside a moved one is no texture to keep; README: "Two heads")
    return WarpFillGenerator(
        mirror=base == "warp_mirror",
        mouth_style=mouth,
        own_kind_donors=False,
        stretch_at=0.0,
        mirror_face=False,
    )


@dataclass
class Bases:
    """What :meth:`DiffusionGenerator.bases` makes of a batch of inputs."""

    inputs: list[GeneratorInput]  # as the model reads them: its base as ``warped``
    mouths: list[MouthPaint | None]  # where each base has the mouth prior painted
    details: list[torch.Tensor | None]  # the source detail split off each one, to add back
    # (1, R, R) where each base filled a hole (None: a raw-warp base), so the face lands there:
    # background the blend mask over the head would leave to the warp (the old head's place)
    holes: list[torch.Tensor | None]


# A model with two flow channels (UNetConfig.flow_channels) also *displaces* its base: the face
# samples the base at each pixel plus a smooth displacement field, then adds the residual.
# Most of what the residual alone cannot fix is texture a pixel or two out of place (the head
# model's misfit, the tracker's error): a residual can only blur it away, a displacement moves
# it, and stays sharp. The field is the network's two extra channels averaged over
# DISPLACEMENT_POOL x DISPLACEMENT_POOL cells (smooth by construction), bounded softly by
# DISPLACEMENT_LIMIT working pixels, and upsampled bilinearly.
# The displaced base is resampled bicubically: bilinear resampling at any fractional shift
# low-passes the finest texture (measured on val pairs: face Laplacian variance 0.67 of the
# real frame's with bilinear, 0.94 with bicubic, for the same model and a mean shift of 0.07 px).
DISPLACEMENT_POOL = 4
DISPLACEMENT_LIMIT = 8.0
DISPLACEMENT_MODE = "bicubic"


def displacement_field(raw: torch.Tensor) -> torch.Tensor:
    """(B, 2, H, W) displacement in working pixels from the network's (B, 2, H, W) flow channels."""
    h, w = raw.shape[-2:]
    coarse = F.avg_pool2d(raw.float(), DISPLACEMENT_POOL, ceil_mode=True)
    coarse = DISPLACEMENT_LIMIT * torch.tanh(coarse / DISPLACEMENT_LIMIT)
    return F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)


def displace(images: torch.Tensor, displacement: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) images read at each pixel plus its displacement (B, 2, H, W), as a
    displacing model's base is read."""
    return warp_batch(images, displacement, mode=DISPLACEMENT_MODE)


def displaced_face(
    base: torch.Tensor, residual: torch.Tensor, displacement: torch.Tensor | None, residual_scale: float
) -> torch.Tensor:
    """(B, 3, H, W) face: the base (displaced, when a displacement is given) plus the residual
    (in [-1, 1] x residual_scale units), not clamped (training needs the gradient everywhere;
    the runtime clamps). Training and every runtime path use this."""
    if displacement is not None:
        base = displace(base, displacement)
    return base + residual / (2 * residual_scale)


def fill_warp(inputs: GeneratorInput, fill: WarpFillGenerator) -> GeneratorInput:
    """``inputs`` with its warp's holes filled by the learning-free generator: the base of a
    ``warp_fill`` model (its condition's warped source, and what its residual is added to).
    The training cache renders its pairs through this too, so train and serve agree."""
    return replace(inputs, warped=fill(inputs).face)


def default_weights(steps: int = 1) -> Path:
    """The shipped weights for a step count: the 1- or 2-step student, else the teacher (the
    2-step student falls back to the 1-step one, the teacher to the 2-step one, when absent)."""
    chain = {1: [DEFAULT_WEIGHTS], 2: [STUDENT2_WEIGHTS, DEFAULT_WEIGHTS]}.get(
        steps, [TEACHER_WEIGHTS, STUDENT2_WEIGHTS, DEFAULT_WEIGHTS]
    )
    return next((p for p in chain if p.is_file()), chain[0])


def weights_available(path: str | Path | None = None) -> bool:
    """Whether the (default) generator weights are installed."""
    return Path(path or DEFAULT_WEIGHTS).is_file()


@dataclass
class DiffusionConfig:
    weights: str | Path | None = None  # None: default_weights(steps) (1: the 1-step student)
    steps: int = 1  # sampling steps (1 or 2 for the distilled students, 16+ for the teacher)
    sampler: str = "euler"  # see sampling.SAMPLERS
    motion_weight: float = 1.0  # fusion weights (sampling.fused_model_fn); 1 = as trained
    identity_weight: float = 1.0
    seed: int = 0  # the fixed starting noise
    device: str = "cpu"
    # "auto" (fp16 on CUDA, bf16 autocast on a CPU with bf16 instructions, else float32; see
    # core.cpu), "float32", "bfloat16", "float16"
    dtype: str = "auto"
    feather: float = 1 / 32  # blend-mask dilation and feather, as a fraction of R
    history: bool = True  # use GeneratorInput.history when given
    # Where the source is visible, keep only the residual's low frequencies (Gaussian sigma in
    # working pixels), so the warp's real detail shows through; hidden regions keep the whole
    # residual. 0 = off (the model's output as trained). See keep_warp_detail.
    detail: float = 0.0
    # Where the source is visible, amplify the face's finest band (at most this factor) until
    # its local energy matches the warp's: a one-step sample is a mean and comes out softer than
    # the real frame. 1 = off (the model's output as trained). See match_warp_texture.
    texture_gain: float = TEXTURE_GAIN
    # The mouth interior the base paints where the source shows none (generator.mouth's
    # MOUTH_STYLES), or None for the one the weights were trained on (their metadata ``mouth``;
    # files from before session 13: the mean strips). The shipped file, trained on strips and
    # served teeth, scores the same on val and is sharper (README: "A sharper learned face").
    mouth: str | None = None
    # A source whose face is more detailed than this (the standard deviation of its finest band
    # on the working grid) is shown to the model brought down to it, and the rest of its detail
    # is added back to the face where the frame shows the source: the model keeps to sources
    # like its training clips', the face keeps the portrait's own detail. None: the level the
    # weights record (metadata ``source_detail``), else that of the shipped weights' training
    # clips (source_detail.SOURCE_DETAIL); 0 = off. See source_detail.
    source_detail: float | None = None


def load_weights(
    path: str | Path, device: torch.device | str = "cpu"
) -> tuple[ConditionalUNet, dict[str, str]]:
    """The UNet and its metadata from a safetensors file written by :func:`save_weights`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"generator weights not found: {path}")
    with safe_open(str(path), framework="pt", device=str(device)) as f:
        meta = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no iteration)
    if meta.get("format") != WEIGHTS_FORMAT:
        raise ValueError(f"{path}: not rt-portrait generator weights (format {meta.get('format')!r})")
    model = ConditionalUNet(UNetConfig.from_dict(json.loads(meta["unet_config"])))
    model.load_state_dict(tensors)
    return model.to(device).eval(), meta


def save_weights(
    model: ConditionalUNet,
    path: str | Path,
    residual_scale: float,
    prediction: str = "sample",
    extra: dict[str, str] | None = None,
) -> None:
    """Write the UNet's tensors (float32) with the metadata :func:`load_weights` needs."""
    from safetensors.torch import save_file

    meta = {
        "format": WEIGHTS_FORMAT,
        "unet_config": json.dumps(model.config.to_dict()),
        "residual_scale": str(residual_scale),
        "prediction": prediction,
        **(extra or {}),
    }
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")  # a reader (or a copy) never sees half a file
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def face_alpha(labels: torch.Tensor, feather: float = 1 / 32) -> torch.Tensor:
    """(B, 1, R, R) soft blend mask over the whole head (every label but the background),
    dilated and feathered by about ``feather * R`` so the generator's corrections at the head's
    outline (ghosts, revealed hair) land, and no seam shows. Computed on a 4x coarser grid
    (pooling at full resolution costs ~10 ms on the CPU) and upsampled bilinearly."""
    r = labels.shape[-1]
    head = (labels != int(Region.BACKGROUND)).float().reshape(-1, 1, *labels.shape[-2:])
    coarse = F.avg_pool2d(head, 4) if r % 4 == 0 and r >= 32 else head
    step = r / coarse.shape[-1]
    k = max(1, round(feather * r / step)) | 1  # odd
    dilated = F.max_pool2d((coarse > 0).float(), k, stride=1, padding=k // 2)
    soft = F.avg_pool2d(dilated, k, stride=1, padding=k // 2, count_include_pad=False)
    if coarse.shape[-1] != r:
        soft = F.interpolate(soft, size=labels.shape[-2:], mode="bilinear", align_corners=False)
    return soft.clamp(0, 1)


def keep_warp_detail(
    face: torch.Tensor, warped: torch.Tensor, visibility: torch.Tensor, sigma: float
) -> torch.Tensor:
    """(B, 3, R, R) ``face`` whose residual over ``warped`` keeps only its low frequencies where
    the source is visible (``visibility`` (B, R, R) in [0, 1], softened by the same blur).

    A one-step sample is the model's mean guess, so its residual also cancels the warp's fine
    texture wherever that texture is slightly misplaced: the face comes out blurred. Where
    the warp shows the real source, its texture is the best detail there is; where it shows
    nothing (a revealed cheek, an opened mouth), the generator's own output stays whole.
    Measured on val pairs it trades face PSNR for sharpness (README: Generator)."""
    if sigma <= 0:
        return face
    residual = face - warped
    v = gaussian_blur(visibility.reshape(-1, 1, *visibility.shape[-2:]).float(), sigma).clamp(0, 1)
    residual = v * gaussian_blur(residual, sigma) + (1 - v) * residual
    return (warped + residual).clamp(0, 1)


# a source's (base, detail) split (source_detail.split_detail), or None: not split
SourceSplit = tuple[torch.Tensor, torch.Tensor] | None


class DiffusionGenerator:
    """Conditioning -> sampler -> face (the warp plus the predicted residual) and alpha."""

    def __init__(self, config: DiffusionConfig | None = None) -> None:
        self.config = cfg = config or DiffusionConfig()
        if cfg.sampler not in SAMPLERS:
            raise ValueError(f"unknown sampler {cfg.sampler!r}; choose from {sorted(SAMPLERS)}")
        if cfg.steps < 1:
            raise ValueError(f"steps must be at least 1, got {cfg.steps}")
        if not cfg.texture_gain >= 1:
            raise ValueError(f"texture_gain must be 1 or more (1 = off), got {cfg.texture_gain}")
        self.device = torch.device(cfg.device)
        path = Path(cfg.weights) if cfg.weights is not None else default_weights(cfg.steps)
        self.model, self.meta = load_weights(path, self.device)
        if self.device.type == "cpu":  # measured: channels_last is faster with oneDNN on this CPU
            self.model = self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        if self.model.config.cond_channels != NUM_CHANNELS:
            raise ValueError(
                f"{path}: the model takes {self.model.config.cond_channels} condition channels, "
                f"the conditioning has {NUM_CHANNELS}"
            )
        # the network as it runs: the model itself (under autocast), or a copy cast to the
        # working precision where that is faster (core.cpu.casts_weights)
        self.dtype = auto_dtype(self.device) if cfg.dtype == "auto" else cfg.dtype
        self.net: ConditionalUNet = self.model
        if casts_weights(self.device, self.dtype):
            self.net = copy.deepcopy(self.model).to(torch.bfloat16)
        self.residual_scale = float(self.meta.get("residual_scale", "1"))
        self.prediction = self.meta.get("prediction", "sample")
        if self.prediction not in PREDICTIONS:
            raise ValueError(f"{path}: unknown prediction {self.prediction!r}; expected one of {PREDICTIONS}")
        self.base = self.meta.get("base", "warp")
        if self.base not in BASES:
            raise ValueError(f"{path}: unknown residual base {self.base!r}; expected one of {BASES}")
        # and the mouth interior: the one asked for, else the one it was trained on (files from
        # before session 13 do not record theirs: the mean strips)
        self.mouth = cfg.mouth or self.meta.get("mouth") or "strips"
        if self.mouth not in MOUTH_STYLES:
            raise ValueError(f"unknown mouth style {self.mouth!r}; choose from {', '.join(MOUTH_STYLES)}")
        self._fill = base_fill(self.base, self.mouth)
        # The head shell the weights were trained on (flow.scene.SceneConfig.skin_follow): a
        # model sees the geometry it learned. Files from before session 12 saw a rigid shell
        # and do not say so: they get the runtime's (None), whose neck follows the jaw. The
        # shipped file scores the same on val with it and leaves no ghost of the old jawline
        # under a lowered chin (README: "A sharper learned face, with teeth and no jaw ghost").
        follow = self.meta.get("skin_follow")
        self.skin_follow: float | None = None if follow is None else float(follow)
        # and the skull behind the face (pipeline.AnimatorConfig.shell); files from before
        # session 16 do not record it and were trained on the generic one
        self.shell = self.meta.get("shell") or "generic"
        if self.shell not in ("fitted", "generic"):
            raise ValueError(f"{path}: unknown shell {self.shell!r}; expected 'fitted' or 'generic'")
        # the fringe and the unseen background beside a moved head (AnimatorConfig.fringe,
        # .background_seen): what the weights record; files from before session 21 record
        # neither and were trained without, but are served with both since session 22 (without,
        # a head that moves leaves its old self on the wall; README: "Two heads")
        self.fringe = self.meta.get("fringe", "1") == "1"
        self.background_seen = self.meta.get("background_seen", "1") == "1"
        self.source_detail = (
            cfg.source_detail
            if cfg.source_detail is not None
            else float(self.meta.get("source_detail", SOURCE_DETAIL))
        )
        if not self.source_detail >= 0:
            raise ValueError(f"source_detail must be 0 (off) or more, got {self.source_detail}")
        self._noise: dict[tuple[int, int], torch.Tensor] = {}
        # per source: the sigma that splits its detail, and the split (base, detail) when there
        # is one; computed once (a blur per frame cost 3 ms), for a few sources at a time
        self._source_splits: dict[tuple[int, tuple[int, ...], float], tuple[float, SourceSplit]] = {}
        self._source_lock = threading.Lock()  # a server's sessions call from several threads

    def _autocast(self) -> AbstractContextManager[object]:
        dt = self.dtype
        if dt == "float32" or self.net is not self.model:
            return nullcontext()
        dtype = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dt]
        return torch.autocast(self.device.type, dtype=dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        """One network call at the working precision, float32 out."""
        dt = next(self.net.parameters()).dtype
        with self._autocast():
            return self.net(x.to(dt), t, cond.to(dt)).float()

    def noise(self, h: int, w: int) -> torch.Tensor:
        """(1, 3, h, w) starting noise, fixed per size by the seed."""
        if (h, w) not in self._noise:
            g = torch.Generator().manual_seed(self.config.seed)
            self._noise[(h, w)] = torch.randn(1, 3, h, w, generator=g).to(self.device)
        return self._noise[(h, w)]

    @torch.inference_mode()
    def residual(self, cond: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) predicted residual (image units in [-1, 1] x residual_scale) for a
        condition batch."""
        return self.sample(cond)[0]

    @torch.inference_mode()
    def sample(self, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The predicted residual (B, 3, R, R) and, for a displacing model, the displacement
        (B, 2, R, R) of its base in working pixels (else None), for a condition batch.

        The displacement is read from the first network call (t = 1, from the fixed noise,
        the full condition's rows): the one call every step count and fusion makes."""
        b, _, h, w = cond.shape
        cfg = self.config
        if self.prediction == "regression":  # plain regression (ablation): one forward from zeros
            x = torch.zeros(b, 3, h, w, device=cond.device)
            out = self.forward(x, torch.ones(b, device=cond.device), cond)
            return out[:, :3], self._displacement(out[:, 3:])
        first: list[torch.Tensor] = []

        def model_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
            out = self.forward(x, t, c)
            if not first:
                first.append(out[:b, 3:])
            x0 = out[:, :3]
            return x0_to_velocity(x, t, x0) if self.prediction == "sample" else x0

        fn = fused_model_fn(
            model_fn,
            lambda c, group: drop_groups(c, {group: True}),
            cfg.motion_weight,
            cfg.identity_weight,
        )
        x_t = self.noise(h, w).expand(b, -1, -1, -1)
        res = SAMPLERS[cfg.sampler](fn, x_t, schedule(cfg.steps, device=cond.device), cond)
        return res, self._displacement(first[0])

    def _displacement(self, raw: torch.Tensor) -> torch.Tensor | None:
        return displacement_field(raw) if self.model.config.flow_channels else None

    def with_base(self, inputs: Sequence[GeneratorInput]) -> list[GeneratorInput]:
        """The inputs as the model reads them: the source at most as detailed as the training
        clips' (``source_detail``), and its warp, or the filled warp (see ``BASES``)."""
        return self.bases(inputs).inputs

    def bases(self, inputs: Sequence[GeneratorInput]) -> Bases:
        """:meth:`with_base`, with what the outputs need of each base: where the mouth prior
        is painted (so that compose repaints it finer), the source detail split off
        (:meth:`split_source`), to add back, and where the base filled a hole."""
        split = [self.split_source(x) for x in inputs]
        inputs = [x for x, _ in split]
        details = [d for _, d in split]
        if self._fill is None:
            return Bases(inputs, [None] * len(inputs), details, [None] * len(inputs))
        filled = [self._fill(x) for x in inputs]
        return Bases(
            [replace(x, warped=f.face) for x, f in zip(inputs, filled, strict=True)],
            [f.mouth for f in filled],
            details,
            [f.alpha for f in filled],
        )

    def _source_split(self, inputs: GeneratorInput) -> tuple[float, SourceSplit]:
        source, labels = inputs.source, inputs.source_labels
        if self.source_detail <= 0 or labels is None:
            return 0.0, None
        # the pointer alone could name a later source at a freed one's address
        key = (source.data_ptr(), tuple(source.shape), float(source.sum()))
        with self._source_lock:
            entry = self._source_splits.get(key)
            if entry is None:
                if len(self._source_splits) >= 8:  # a server's past uploads: keep the newest
                    self._source_splits.pop(next(iter(self._source_splits)))
                sigma = detail_sigma(source, labels, self.source_detail)
                entry = (sigma, split_detail(source, sigma) if sigma > 0 else None)
                self._source_splits[key] = entry
        return entry

    def source_sigma(self, inputs: GeneratorInput) -> float:
        """The blur that brings this input's source down to ``source_detail``
        (:func:`~.source_detail.detail_sigma`), measured once per source."""
        return self._source_split(inputs)[0]

    def split_source(self, inputs: GeneratorInput) -> tuple[GeneratorInput, torch.Tensor | None]:
        """The input with its source's detail above ``source_detail`` taken out of the source
        and of its warp, and that detail warped by the flow and weighted by the visibility
        (3, R, R), to be added back to the face; None where there is nothing to split."""
        split = self._source_split(inputs)[1]
        if split is None:
            return inputs, None
        base, detail = split
        fields = inputs.fields
        warped_detail = warp_working(detail, fields.flow)
        visible = fields.visibility.reshape(1, *warped_detail.shape[-2:])
        return (
            replace(inputs, source=base, warped=inputs.warped - warped_detail),
            warped_detail * visible,
        )

    @torch.inference_mode()
    def generate_batch(self, inputs: Sequence[GeneratorInput]) -> list[GeneratorOutput]:
        """One batched sampling for several inputs (e.g. several sessions' frames)."""
        bases = self.bases(inputs)
        inputs = bases.inputs
        hv = [self.config.history and x.history is not None for x in inputs]
        cond = build_condition_batch([x.to(self.device) for x in inputs], hv)
        res, disp = self.sample(cond)
        warped = torch.stack([x.warped.to(self.device).float() for x in inputs])
        face = displaced_face(warped, res, disp, self.residual_scale).clamp(0, 1)
        return self.outputs(face, bases, self.device, warped, disp)

    def outputs(
        self,
        face: torch.Tensor,
        bases: Bases,
        device: torch.device,
        warped: torch.Tensor | None = None,
        displacement: torch.Tensor | None = None,
    ) -> list[GeneratorOutput]:
        """The sampled faces (N, 3, R, R) (and displacements (N, 2, R, R) of a displacing
        model) on ``bases`` (:meth:`bases`) as outputs: the warp-detail and texture
        post-processes when they are on, the source detail split off each input added back,
        then each one's blend mask (shared by the eager and the engine paths): the head's,
        and wherever the base filled a hole. The mouth paint is dropped for a displaced base,
        which moved it."""
        cfg = self.config
        inputs = bases.inputs
        if cfg.detail > 0 or cfg.texture_gain > 1:
            if warped is None:
                warped = torch.stack([x.warped.to(device).float() for x in inputs])
            visibility = torch.stack([x.fields.visibility.to(device) for x in inputs])
            if displacement is not None:  # the detail of the base the face was built on
                warped = displace(warped, displacement)
                visibility = warp_batch(visibility, displacement)
            face = keep_warp_detail(face.float(), warped, visibility, cfg.detail)
            face = match_warp_texture(face.float(), warped, visibility, cfg.texture_gain)
        if any(d is not None for d in bases.details):
            add = torch.stack(
                [torch.zeros_like(face[0]) if d is None else d.to(device) for d in bases.details]
            )
            if displacement is not None:  # the detail of the base the face was built on
                add = displace(add, displacement)
            face = (face.float() + add).clamp(0, 1)
        labels = torch.stack([x.fields.labels.to(device) for x in inputs])
        alpha = face_alpha(labels, self.config.feather)
        if displacement is None and any(h is not None for h in bases.holes):
            holes = torch.stack(
                [torch.zeros_like(alpha[0]) if h is None else h.to(device) for h in bases.holes]
            )
            alpha = torch.maximum(alpha, holes)
        mouths = bases.mouths if displacement is None else [None] * len(inputs)
        return [
            GeneratorOutput(
                face=face[i],
                alpha=alpha[i],
                displacement=None if displacement is None else displacement[i],
                mouth=mouths[i],
            )
            for i in range(len(inputs))
        ]

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        return self.generate_batch([inputs])[0]
