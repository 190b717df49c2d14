"""The one data path: driver frame -> tracking -> head -> flow -> generator -> compose.

``Animator`` holds what is computed once per source portrait (its head state, its scene
point cloud per working size, its tensors). ``AnimatorSession`` holds the per-driver state
that must persist across frames: the tracker, the smoothing filters, the driver reference
frame and the hold/ease state for frames without a face. The offline CLI, the benchmark
and the live server all drive this same object.

History: the session keeps its last output on the working grid; the next frame's history
(a generator input) is that output warped by the flow between the two target head states,
with a validity mask. ``AnimatorConfig.history`` says how that flow is computed:
``"compose"`` composes the two frames' flows to the source (current -> source ->
previous, inverting the previous one by a few fixed-point steps; about 1 ms, valid where the
inversion is consistent); ``"exact"`` runs the flow stage between the two head states' scene
points, as the training cache does (a second flow per frame, valid where the previous head
shows the point). The first frame, a working-size change or a recalibration has none.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.transform import Rotation

from rt_portrait.compose import (
    FrameWarp,
    choose_window,
    compose,
    crop_window,
    displace_fields,
    to_image,
    to_tensor,
    warp_working,
    window_taper,
)
from rt_portrait.core.fill import gaussian_blur
from rt_portrait.core.image import ImageLimits, fit_long_side
from rt_portrait.flow import compute_flow, source_background_visibility, source_visibility
from rt_portrait.flow.elastic import background_seen, elastic_background
from rt_portrait.flow.scene import SceneBuilder, SceneConfig
from rt_portrait.flow.types import FlowConfig, FlowFields, PointCloud, Window
from rt_portrait.generator import Generator, GeneratorInput, WarpFillGenerator, label_irises
from rt_portrait.generator.colour import CHROMA_CLAMP, ChromaStats, keep_source_chroma, source_chroma
from rt_portrait.generator.diffusion import displace
from rt_portrait.generator.select import (
    STILL_SIGMA,
    GeneratorSpec,
    build_generator,
    generator_kind,
    uses_history,
)
from rt_portrait.generator.texture import TEXTURE_GAIN
from rt_portrait.head import HeadStateSmoother, Retargeter, apply_edits, build_shell, fit_head, load_template
from rt_portrait.head.fit import head_euler
from rt_portrait.head.shell import SHELL_MODES, Fringe, ShellFit, fit_fringe, fit_shell
from rt_portrait.head.types import Edits, HeadState, Pose, RetargetConfig
from rt_portrait.tracking import (
    FaceTracker,
    SmoothingConfig,
    TrackerConfig,
    TrackResult,
    check_size,
    segment_person,
    to_rgb,
    track_image,
)


class NoFaceError(ValueError):
    """The source portrait has no detectable face."""


@dataclass
class AnimatorConfig:
    size: int = 256  # working resolution of the flow
    retarget: RetargetConfig = field(default_factory=RetargetConfig)
    edits: Edits = field(default_factory=Edits)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    device: str = "cpu"
    flow_backend: str = "auto"  # "auto", "torch" or "triton"
    # the point cloud the flow splats; None: the head geometry the generator was trained on
    # (a learned generator's ``skin_follow``, where its weights record it), else SceneConfig's
    scene: SceneConfig | None = None
    hold_frames: int = 5  # frames without a face during which the last motion is held
    ease_frames: int = 20  # then frames over which the head eases back to neutral
    limits: ImageLimits = field(default_factory=ImageLimits)
    max_output_side: int | None = None  # downscale the source (and so the output) to this long side
    # The generator: "auto" (diffusion when its weights are installed, else warp), "diffusion"
    # or "warp" (the learning-free warp fill); sampling steps and fusion weights of diffusion.
    generator: str = "auto"
    steps: int = 1
    motion_weight: float = 1.0
    identity_weight: float = 1.0
    detail: float = 0.0  # keep the warp's detail where visible (DiffusionConfig.detail); 0 = off
    # match the warp's texture energy where the source is visible (DiffusionConfig.texture_gain); 1 = off
    texture_gain: float = TEXTURE_GAIN
    # the most detail a learned generator is shown of the source; the rest is added back where
    # visible (DiffusionConfig.source_detail); None: the weights' level, 0: off
    source_detail: float | None = None
    # compose the generator's face as a correction of the full-resolution warp where the source
    # is visible, so detail finer than the working grid survives (compose.compose's ``warped``)
    frame_detail: bool = True
    generator_weights: str | None = None  # None: the shipped weights
    # how a mouth the source keeps shut is painted, by the warp fill and in a learned generator's
    # base ("teeth" or "strips", the mean strips of sessions 11-12 that the shipped weights were
    # trained on; generator.mouth.MOUTH_STYLES)
    mouth: str = "teeth"
    # the diffusion network's engine (rt_portrait.engines): "auto", "eager", "compile",
    # "onnxruntime" or "tensorrt", resolved once when the generator is built
    backend: str = "auto"
    # history flow: "compose", "exact" or "off" (see the module doc). Off by default: the shipped
    # students were trained with real frames as history, and fed their own outputs they drift
    # (a driven clip diverges within a few seconds), so history waits for a model trained on that.
    history: str = "off"
    # the head shell: "fitted" (the skull scaled to the source's person segmentation, so a head
    # turn carries ears and hair with it), "generic" (the template's skull), or "auto": fitted
    # for the warp fill, for a learned generator the one it was trained on (its ``shell``)
    shell: str = "auto"
    # the person's head beyond the skull (fitted or generic: a hat's brim, big hair; the
    # source's person segmentation above the chin) is attached to the head and turns with it
    # (head.shell.fit_fringe); False: the skull alone, before session 21. None: as the
    # generator says (Animator.serves_with): on for the warp fill and, since session 22, for
    # learned weights that record nothing (the shipped ones)
    fringe: bool | None = None
    # background pixels that sample the source's head (where the elastic background stretches
    # a moving head's flow over the wall) are unseen, so the generator fills them instead of
    # leaving the old head's cheek and hair on the wall (flow.elastic.background_seen). None:
    # like ``fringe`` (README: "Two heads")
    background_seen: bool | None = None
    # a source that looks at least this far aside (yaw, degrees) offers the warp fill each face
    # pixel's mirror partner, for the half of the face it shows badly (WarpFillGenerator's
    # mirror_face); None: never. A near-frontal source shows both halves: there the mirror
    # only replaced hair over a cheek's edge with skin (measured: -0.5 dB on a val clip).
    mirror_from_yaw: float | None = 20.0
    # Take away the generator's own change of the still source: its output for the source's
    # head state minus the warp there, low-passed with this Gaussian sigma (working pixels),
    # carried to each frame by the flow and subtracted where the source is visible. A learned
    # generator changes a face that does not move (the shipped one: dlib distance 0.13 from the
    # portrait), and that low-frequency bias moves the likeness in every frame (README: "A
    # sharper learned face"). None: off. Not computed for the warp fill,
    # which leaves a still face as it is.
    still_sigma: float | None = STILL_SIGMA
    # Keep the portrait's colours: each generated face pixel's chroma stays within this many
    # standard deviations of the source head's (or as far out as the visible warp it was
    # given), so a black-and-white portrait stays grey where the learned generator, trained on
    # colour video, would paint skin tones (generator.colour). 0: off.
    chroma_clamp: float = CHROMA_CLAMP

    def generator_spec(self) -> GeneratorSpec:
        return GeneratorSpec(
            generator=self.generator,
            steps=self.steps,
            motion_weight=self.motion_weight,
            identity_weight=self.identity_weight,
            detail=self.detail,
            texture_gain=self.texture_gain,
            source_detail=self.source_detail,
            weights=self.generator_weights,
            mouth=self.mouth,
            device=self.device,
            backend=self.backend,
            size=self.size,
        )


@dataclass
class AnimatedFrame:
    image: np.ndarray  # (H, W, 3) uint8 RGB at the source's resolution
    face_found: bool  # whether the driver frame had a face (False: motion held / easing back)
    timings_ms: dict[str, float]  # per stage: track, fit, flow, warp, total
    head: HeadState | None = None  # the target head state that was rendered
    fields: FlowFields | None = None


@dataclass
class History:
    """The session's last output on the working grid, to be warped to the next frame."""

    image: torch.Tensor  # (3, R, R) the output's working-grid image (warp with the face blended)
    points: PointCloud  # the target head state's scene points it was rendered from
    flow: torch.Tensor  # (2, R, R) its flow to the source (working px)
    size: int


HISTORY_MODES = ("compose", "exact", "off")


def compose_history_flow(
    flow: torch.Tensor, previous_flow: torch.Tensor, iterations: int = 3, tolerance: float = 0.5
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2, R, R) flow from the current frame to the previous one, and its (R, R) validity.

    Both frames' backward flows lead to the source: pixel p of now samples the source at
    p + flow(p), pixel q of the previous frame at q + previous_flow(q). The history flow d
    solves d + previous_flow(p + d) = flow(p) (the previous pixel that saw the same source
    point), by fixed-point steps from d = flow - previous_flow. Valid where the solution is
    consistent to ``tolerance`` working px and lands inside the grid; pixels the previous
    frame did not show (disocclusions) do not converge and are invalid. Solved on a 2x
    coarser grid (the flows are smooth; it costs a quarter) and upsampled."""
    r = flow.shape[-1]
    half = r % 2 == 0 and r >= 64
    f, g = (
        (F.avg_pool2d(torch.stack((flow, previous_flow)), 2) / 2).unbind(0) if half else (flow, previous_flow)
    )
    d = f - g
    for _ in range(iterations):
        d = f - warp_working(g, d)
    residual = (d + warp_working(g, d) - f).norm(dim=0)
    n = f.shape[-1]
    base = torch.arange(n, device=flow.device, dtype=torch.float32) + 0.5
    qx, qy = base[None, :] + d[0], base[:, None] + d[1]
    valid = (residual < tolerance * n / r) & (qx >= 0) & (qx <= n) & (qy >= 0) & (qy <= n)
    if half:
        d = F.interpolate(d[None] * 2, size=(r, r), mode="bilinear", align_corners=False)[0]
        valid = F.interpolate(valid[None, None].float(), size=(r, r), mode="nearest")[0, 0] > 0.5
    return d, valid


@dataclass
class Rendered:
    """Everything one render produced (``Animator.render_frame``)."""

    image: np.ndarray  # (H, W, 3) uint8, the source's resolution
    fields: FlowFields
    timings_ms: dict[str, float]  # flow, generator, warp (+ history when warped)
    history: History  # this frame's output, for the next frame's history
    history_valid: torch.Tensor | None  # (R, R) bool where this frame's history was valid; None: none


@dataclass
class _Scene:
    """Everything that depends only on the source and the working size."""

    window: Window
    builder: SceneBuilder
    source_points: PointCloud
    source_visible: torch.Tensor  # (N,) which source points the source image shows
    source_background: torch.Tensor  # (R, R) where the source image shows the background
    source_labels: torch.Tensor  # (R, R) region labels of the source image itself
    # the source cloud with each face point at its mirror partner, and which of those points
    # the source shows; None when the source is near-frontal (AnimatorConfig.mirror_from_yaw)
    mirror: tuple[PointCloud, torch.Tensor] | None
    flow_config: FlowConfig
    source_working: torch.Tensor  # (3, R, R)
    source_chroma: ChromaStats  # the source head's colours (generator.colour)
    taper: torch.Tensor  # (1, R, R)
    frame_warp: FrameWarp  # full-resolution sampling grids of the window


def mirror_flow(scene: _Scene, target_points: PointCloud) -> FlowFields:
    """The flow from each target pixel to its mirror partner in the source (a second flow
    pass, which the warp fill asks for only when much of the face is shown badly)."""
    assert scene.mirror is not None
    points, visible = scene.mirror
    return compute_flow(
        target_points,
        points,
        scene.flow_config,
        source_visible=visible,
        source_background=scene.source_background,
    )


def blend_states(a: HeadState, b: HeadState, t: float) -> HeadState:
    """(1 - t) * a + t * b: slerp of rotations, lerp of everything else (same identity)."""
    if t <= 0:
        return a
    if t >= 1:
        return b
    ra, rb = Rotation.from_matrix(a.pose.rotation), Rotation.from_matrix(b.pose.rotation)
    rot = (Rotation.from_rotvec((rb * ra.inv()).as_rotvec() * t) * ra).as_matrix()
    pose = Pose(
        rot,
        (1 - t) * a.pose.translation + t * b.pose.translation,
        float(np.exp((1 - t) * np.log(a.pose.scale) + t * np.log(b.pose.scale))),
    )
    return replace(a, pose=pose, expression=(1 - t) * a.expression + t * b.expression)


class Animator:
    """A source portrait ready to be animated.

    >>> animator = Animator(portrait_rgb)          # doctest: +SKIP
    >>> session = animator.session()               # doctest: +SKIP
    >>> frame = session(driver_rgb).image          # doctest: +SKIP
    """

    def __init__(
        self,
        source: np.ndarray,
        config: AnimatorConfig | None = None,
        name: str = "source",
        generator: Generator | None = None,
        source_track: TrackResult | None = None,
    ) -> None:
        """``source_track``: the source's landmarks when they are already known (e.g. a video
        frame tracked by the same tracker as the driver); otherwise the source is tracked here,
        in static-image mode."""
        self.config = config or AnimatorConfig()
        self.name = name
        rgb = to_rgb(source, name=name)
        check_size(rgb, self.config.limits, name)
        if source_track is not None:
            if source_track.image_size != rgb.shape[:2]:
                raise ValueError(
                    f"{name}: source_track is for a {source_track.image_size} image, the source is {rgb.shape[:2]}"
                )
            if self.config.max_output_side is not None and max(rgb.shape[:2]) > self.config.max_output_side:
                raise ValueError(f"{name}: source_track cannot be combined with max_output_side downscaling")
        rgb = fit_long_side(rgb, self.config.max_output_side)
        track = source_track if source_track is not None else track_image(rgb)
        if not track.found:
            raise NoFaceError(
                f"{name}: no face found in the source portrait ({track.message or 'no detection'})"
            )
        self.source = rgb
        self.image_size = (rgb.shape[0], rgb.shape[1])
        self.source_landmarks = track.landmarks
        self.template = load_template()
        self.source_state = fit_head(track.landmarks, self.image_size, template=self.template)
        self.device = torch.device(self.config.device)
        self.source_tensor = to_tensor(rgb, self.device)
        # an explicit generator wins over the config's choice
        self.generator: Generator = generator or build_generator(self.config.generator_spec())
        self.shell_fit: ShellFit | None = None
        fringe: Fringe | None = None
        fitted, with_fringe = self.shell_mode() == "fitted", self.serves_with("fringe")
        if fitted or with_fringe:
            person = segment_person(rgb)
            if fitted:
                self.shell_fit = fit_shell(self.template, self.source_state.pose, person)
            if with_fringe:  # beyond the fitted skull, or the generic one
                fringe = fit_fringe(self.template, self.source_state.pose, person, self.shell_fit)
        self.shell = build_shell(self.template, fit=self.shell_fit, fringe=fringe)
        self._warp_generator: Generator | None = (
            generator if isinstance(generator, WarpFillGenerator) else None
        )
        self._scenes: dict[int, _Scene] = {}
        self._scene_lock = threading.Lock()
        # (working size, generator) -> its low-passed change of the still source (still_change)
        self._still: dict[tuple[int, int], tuple[Generator, torch.Tensor]] = {}
        self._still_lock = threading.Lock()

    def backend_summary(self) -> dict[str, object] | None:
        """The generator backend in use and why (None for a generator without a network)."""
        if generator_kind(self.generator) != "diffusion":
            return None
        from rt_portrait.engines.generator import backend_summary

        return backend_summary(self.generator)

    @property
    def warp_generator(self) -> Generator:
        """The learning-free generator (the fallback a degrading session switches to)."""
        if self._warp_generator is None:
            self._warp_generator = (
                self.generator
                if isinstance(self.generator, WarpFillGenerator)
                else WarpFillGenerator(mouth_style=self.config.mouth)
            )
        return self._warp_generator

    def scene(self, size: int) -> _Scene:
        """The scene at working size ``size``, built once. Sessions in several threads share
        the animator: one builds a missing size while the others wait for it."""
        scene = self._scenes.get(size)
        if scene is None:
            with self._scene_lock:
                scene = self._scenes.get(size)
                if scene is None:
                    scene = self._scenes[size] = self._build_scene(size)
        return scene

    def shell_mode(self) -> str:
        """ "fitted" or "generic": the config's choice, or for "auto" the one the generator
        was trained on (the warp fill has no training: fitted)."""
        mode = self.config.shell
        if mode not in SHELL_MODES:
            raise ValueError(f"shell must be one of {SHELL_MODES}, got {mode!r}")
        if mode != "auto":
            return mode
        if isinstance(self.generator, WarpFillGenerator):
            return "fitted"
        return str(getattr(self.generator, "shell", "generic"))

    def serves_with(self, option: str) -> bool:
        """``fringe`` or ``background_seen``: the config's choice, or for None what the
        generator says (a learned one: its weights' record, on for files that record none),
        else on (the warp fill has no training)."""
        if option not in ("fringe", "background_seen"):
            raise ValueError(f"unknown option {option!r}")
        chosen = getattr(self.config, option)
        if chosen is not None:
            return bool(chosen)
        return bool(getattr(self.generator, option, True))

    def scene_config(self) -> SceneConfig:
        """The scene's settings: the config's, else those the generator was trained on."""
        if self.config.scene is not None:
            return self.config.scene
        follow = getattr(self.generator, "skin_follow", None)
        return SceneConfig() if follow is None else SceneConfig(skin_follow=float(follow))

    def _build_scene(self, size: int) -> _Scene:
        window = choose_window(self.source_landmarks, self.image_size, size)
        flow_config = FlowConfig(size=size, backend=self.config.flow_backend)
        builder = SceneBuilder(
            self.template,
            self.shell,
            window,
            self.image_size,
            device=self.device,
            config=self.scene_config(),
            flow=flow_config,
            head_scale=self.source_state.pose.scale,
            anchor_pose=self.source_state.pose,
        )
        source_points = builder(self.source_state)
        source_background = source_background_visibility(source_points, flow_config)
        source_labels = compute_flow(
            source_points, source_points, flow_config, source_background=source_background
        ).labels
        source_labels = label_irises(
            source_labels, self._working_landmarks(self.source_state, window), self.template
        )
        source_working = crop_window(self.source_tensor, window)
        return _Scene(
            window=window,
            builder=builder,
            source_points=source_points,
            source_visible=source_visibility(source_points, flow_config),
            source_background=source_background,
            source_labels=source_labels,
            mirror=self._mirror_cloud(builder, flow_config),
            flow_config=flow_config,
            source_working=source_working,
            source_chroma=source_chroma(source_working, source_labels),
            taper=window_taper(window, self.image_size, self.device),
            frame_warp=FrameWarp(window, self.image_size, self.device),
        )

    def _mirror_cloud(
        self, builder: SceneBuilder, flow_config: FlowConfig
    ) -> tuple[PointCloud, torch.Tensor] | None:
        limit = self.config.mirror_from_yaw
        if limit is None or abs(head_euler(self.source_state)[0]) < limit:
            return None
        points = builder.build_mirrored(self.source_state, self.template.mirror)
        return points, source_visibility(points, flow_config)

    def _working_landmarks(self, state: HeadState, window: Window) -> torch.Tensor:
        """(478, 3) float32 vertices of ``state`` in the window's working px."""
        v = (state.vertices() - [window.x0, window.y0, 0.0]) * window.scale
        return torch.from_numpy(v.astype(np.float32)).to(self.device)

    def target_state(self, edits: Edits) -> HeadState:
        """The source head with edits only (no driver)."""
        return apply_edits(self.source_state, edits, self.template)

    @torch.inference_mode()
    def render(
        self, target: HeadState, size: int | None = None
    ) -> tuple[np.ndarray, FlowFields, dict[str, float]]:
        """Flow, generator and compose for one target head state (no history)."""
        r = self.render_frame(target, size)
        return r.image, r.fields, r.timings_ms

    def history_flow(self, scene: _Scene, target_points: PointCloud, previous: History) -> FlowFields:
        """Flow fields from the current target head state to the previous one (the flow that
        warps the previous output to now); built exactly as the training cache builds it."""
        fields = compute_flow(target_points, previous.points, scene.flow_config)
        return replace(fields, flow=elastic_background(fields) * scene.taper)

    def generator_input(self, target: HeadState, size: int) -> tuple[GeneratorInput, PointCloud]:
        """The generator's input for ``target`` at working size ``size`` (no history), and the
        target's point cloud: the flow from the target to the source and the warp by it."""
        scene = self.scene(size)
        target_points = scene.builder(target)
        fields = compute_flow(
            target_points,
            scene.source_points,
            scene.flow_config,
            source_visible=scene.source_visible,
            source_background=scene.source_background,
        )
        fields = replace(fields, flow=elastic_background(fields) * scene.taper)
        if self.serves_with("background_seen"):
            fields = replace(fields, visibility=background_seen(fields, scene.source_background))
        inputs = GeneratorInput(
            warped=warp_working(scene.source_working, fields.flow),
            source=scene.source_working,
            fields=fields,
            history=None,
            source_labels=scene.source_labels,
            landmarks=self._working_landmarks(target, scene.window),
            mirror=None if scene.mirror is None else partial(mirror_flow, scene, target_points),
        )
        return inputs, target_points

    def still_change(self, size: int, generator: Generator | None = None) -> torch.Tensor | None:
        """(3, R, R) what ``generator`` (default: the animator's) changes in the still source:
        its face for the source's own head state minus the warp there, blended by its mask and
        low-passed (``AnimatorConfig.still_sigma``), in the source's working coordinates. None
        when off or for the warp fill. Computed once per working size and generator (one more
        generator call; sessions in several threads share it)."""
        gen = generator or self.generator
        sigma = self.config.still_sigma
        if sigma is None or isinstance(gen, WarpFillGenerator):
            return None
        key = (size, id(gen))
        entry = self._still.get(key)
        if entry is None or entry[0] is not gen:
            with self._still_lock:  # not the scene's: measuring may build the scene
                entry = self._still.get(key)
                if entry is None or entry[0] is not gen:
                    entry = self._still[key] = (gen, self._measure_still_change(size, gen, sigma))
        return entry[1]

    def prepare(self, size: int | None = None) -> None:
        """Build what the first frame at working size ``size`` would otherwise build: the scene
        and the generator's change of the still source (one generator call), so a live
        session's first frame costs what the others do."""
        size = size or self.config.size
        self.scene(size)
        self.still_change(size)

    @torch.inference_mode()
    def _measure_still_change(self, size: int, gen: Generator, sigma: float) -> torch.Tensor:
        inputs, _ = self.generator_input(self.source_state, size)
        out = gen(inputs)
        seen = inputs.fields.visibility.reshape(1, 1, size, size).float()
        change = ((out.face - inputs.warped) * out.alpha)[None] * seen
        # averaged over what the source shows: the unseen pixels' (filled) change stays out
        low = gaussian_blur(change, sigma) / gaussian_blur(seen, sigma).clamp_min(1e-3)
        return low[0]

    @torch.inference_mode()
    def render_frame(
        self,
        target: HeadState,
        size: int | None = None,
        history: History | None = None,
        generator: Generator | None = None,
    ) -> Rendered:
        """Flow, generator and compose for one target head state.

        ``history``: the previous frame's output (``Rendered.history``), warped here to this
        frame when the generator reads history; ``generator`` overrides the animator's (a
        degrading session's cheaper one)."""
        size = size or self.config.size
        gen = generator or self.generator
        scene = self.scene(size)
        t0 = time.perf_counter()
        inputs, target_points = self.generator_input(target, size)
        fields, warped = inputs.fields, inputs.warped
        t1 = time.perf_counter()
        timings: dict[str, float] = {"flow": (t1 - t0) * 1e3}
        hist_image, hist_valid = None, None
        mode = self.config.history
        if mode not in HISTORY_MODES:
            raise ValueError(f"history must be one of {HISTORY_MODES}, got {mode!r}")
        if history is not None and history.size == size and mode != "off" and uses_history(gen):
            if mode == "exact":
                h_fields = self.history_flow(scene, target_points, history)
                h_flow, hist_valid = h_fields.flow, h_fields.visibility[0] > 0.5
            else:
                h_flow, hist_valid = compose_history_flow(fields.flow, history.flow)
            hist_image = warp_working(history.image, h_flow)
            t_h = time.perf_counter()
            timings["history"] = (t_h - t1) * 1e3
            t1 = t_h
        still = self.still_change(size, gen)  # measured before the frame's own call, once
        out = gen(replace(inputs, history=hist_image))
        if still is not None:  # the generator's bias, where this frame shows the source
            shift = warp_working(still, fields.flow) * fields.visibility.reshape(1, size, size)
            out = replace(out, face=(out.face - shift).clamp(0, 1))
        if self.config.chroma_clamp > 0:  # no colour the portrait lacks (a grey one stays grey)
            out = replace(
                out,
                face=keep_source_chroma(
                    out.face, scene.source_chroma, self.config.chroma_clamp, warped, fields.visibility
                ),
            )
        if out.displacement is not None:  # the face was built on a displaced warp: so is the frame
            fields = displace_fields(fields, out.displacement)
            warped = displace(warped[None], out.displacement[None])[0]
        t2 = time.perf_counter()
        frame = compose(
            self.source_tensor,
            fields,
            scene.frame_warp,
            out.face,
            out.alpha,
            warped if self.config.frame_detail else None,
            out.mouth,
        )
        image = to_image(frame)
        t3 = time.perf_counter()
        timings["generator"] = (t2 - t1) * 1e3
        timings["warp"] = (t3 - t2) * 1e3
        working = torch.lerp(warped, out.face, out.alpha)  # the output as the working grid sees it
        return Rendered(
            image, fields, timings, History(working, target_points, fields.flow, size), hist_valid
        )

    def render_edits(self, edits: Edits, size: int | None = None) -> AnimatedFrame:
        t0 = time.perf_counter()
        target = self.target_state(edits)
        t1 = time.perf_counter()
        image, fields, timings = self.render(target, size)
        timings = {"track": 0.0, "fit": (t1 - t0) * 1e3, **timings, "total": (time.perf_counter() - t0) * 1e3}
        return AnimatedFrame(image, True, timings, target, fields)

    def session(self, fps: float = 30.0) -> AnimatorSession:
        return AnimatorSession(self, fps=fps)


class AnimatorSession:
    """Per-driver state. Call it with each driver frame, in order."""

    def __init__(self, animator: Animator, fps: float = 30.0) -> None:
        cfg = animator.config
        self.animator = animator
        self.fps = fps
        self.edits = replace(cfg.edits)
        self.retarget = replace(cfg.retarget, strengths=replace(cfg.retarget.strengths))
        self.size = cfg.size
        self.tracker = FaceTracker(
            TrackerConfig(static_image=False, max_faces=1)
        )  # one face: the detector stops once it is tracked
        self.smoother = HeadStateSmoother(cfg.smoothing)
        self.retargeter = Retargeter(animator.source_state, self.retarget)
        self._driven: HeadState | None = None  # last retargeted state, before edits
        self._missing = 0
        self._frame_index = 0
        self.generator: Generator = animator.generator  # a degrading server may swap in a cheaper one
        self.history: History | None = None  # the last output, for the next frame's history
        self.history_valid: torch.Tensor | None = None  # (R, R) validity of the last frame's history

    def recalibrate(self) -> None:
        """Make the next driver frame with a face the neutral reference (relative mode)."""
        self.retargeter.set_reference(None)
        self.smoother.reset()
        self.history = None

    def drive(self, frame: np.ndarray, t: float | None = None) -> tuple[HeadState, bool, dict[str, float]]:
        """Track and retarget one driver frame; returns the target head state (edits applied)."""
        t0 = time.perf_counter()
        track = self.tracker.track(frame)
        t1 = time.perf_counter()
        target, found, timings = self.drive_track(track, t)
        return target, found, {"track": (t1 - t0) * 1e3, **timings}

    def drive_track(
        self, track: TrackResult, t: float | None = None
    ) -> tuple[HeadState, bool, dict[str, float]]:
        """Retarget an already tracked driver frame (e.g. tracked once and shared with a
        baseline); frames must still come in order."""
        t = self._frame_index / self.fps if t is None else t
        self._frame_index += 1
        t1 = time.perf_counter()
        if track.found:
            driver = fit_head(track.landmarks, track.image_size, template=self.animator.template)
            driver = self.smoother(driver, t)
            self.retargeter.config = self.retarget  # strengths and mode may change live
            self._driven = self.retargeter(driver, t)
            self._missing = 0
            driven = self._driven
        else:
            # hold the last motion for a moment, then ease back to the neutral source
            self._missing += 1
            neutral = self.animator.source_state
            if self._driven is None:
                driven = neutral
            else:
                cfg = self.animator.config
                ease = (self._missing - cfg.hold_frames) / max(cfg.ease_frames, 1)
                driven = blend_states(self._driven, neutral, float(np.clip(ease, 0.0, 1.0)))
        target = apply_edits(driven, self.edits, self.animator.template)
        t2 = time.perf_counter()
        return target, track.found, {"fit": (t2 - t1) * 1e3}

    def __call__(self, frame: np.ndarray, t: float | None = None) -> AnimatedFrame:
        t0 = time.perf_counter()
        target, found, timings = self.drive(frame, t)
        return self._render(target, found, timings, t0)

    def animate_track(self, track: TrackResult, t: float | None = None) -> AnimatedFrame:
        """Like calling the session with a frame, for a frame tracked elsewhere."""
        t0 = time.perf_counter()
        target, found, timings = self.drive_track(track, t)
        return self._render(target, found, {"track": 0.0, **timings}, t0)

    def render_target(
        self,
        target: HeadState,
        found: bool,
        timings: dict[str, float],
        t0: float | None = None,
        generator: Generator | None = None,
    ) -> AnimatedFrame:
        """The second half of calling the session: render a target from ``drive`` (so a caller
        can handle a failing tracker and a failing generator apart). ``t0``: when the frame's
        work began, for the total time; ``generator``: this frame's, instead of the session's
        (a fallback for one frame that leaves the session's choice alone)."""
        t0 = time.perf_counter() if t0 is None else t0
        return self._render(target, found, dict(timings), t0, generator)

    def _render(
        self,
        target: HeadState,
        found: bool,
        timings: dict[str, float],
        t0: float,
        generator: Generator | None = None,
    ) -> AnimatedFrame:
        gen = generator if generator is not None else self.generator
        r = self.animator.render_frame(target, self.size, self.history, gen)
        self.history, self.history_valid = r.history, r.history_valid
        timings.update(r.timings_ms)
        timings["total"] = (time.perf_counter() - t0) * 1e3
        return AnimatedFrame(r.image, found, timings, target, r.fields)

    def close(self) -> None:
        self.tracker.close()
