"""Methods the harness compares: two baselines and the 3D-flow animator.

Every method follows :class:`Method`: ``start_clip(source_rgb, source_track)`` once per clip
(per-clip state lives in the method object), then
``method(source_rgb, source_track, driver_rgb, driver_track) -> output_rgb`` for each
evaluated driver frame, in order. The output has the driver frame's size.

* ``static``: the source frame itself (no motion).
* ``warp2d``: a 2D piecewise-affine warp of the source onto the driver's landmarks. The
  triangles are the Delaunay triangulation of the driver's 478 landmarks plus 8 fixed
  image-border points (corners and edge midpoints), so every output pixel is defined and
  the frame border stays put. One dense backward map per frame (barycentric coordinates
  from scipy's Delaunay), then bilinear sampling; no Python loop over pixels.
* ``flow3d``: :class:`rt_portrait.pipeline.Animator` (one Animator and one session per clip)
  with the learning-free warp-fill generator (always: its figures stay comparable across
  versions).
* ``refined`` / ``refined2``: the same animator with the learned diffusion generator, 1 and 2
  sampling steps (the 2-step student when installed); ``teacher``: the teacher's weights in its
  N steps; ``animator``: the generator options given to the harness (``--generator``,
  ``--steps``), i.e. what ``rt-portrait animate`` would run.
  The session is first primed with the source frame itself so that, in the default
  relative retargeting mode, the driver's reference is the source: the motion it applies
  is then the driver's motion away from the source frame, which is what self-reenactment
  asks for. Evaluated frames are then fed in order (the session is stateful).

All methods are driven by the same landmarks (the harness tracks each driver frame once, with
the live session's video-mode tracker, and hands that track to every method); the ground
truth that scores them is tracked separately, in static mode.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from scipy.spatial import Delaunay

from rt_portrait.core.image import resize
from rt_portrait.tracking.types import TrackResult


class Method(Protocol):
    def start_clip(self, source_rgb: np.ndarray, source_track: TrackResult, fps: float = 30.0) -> None: ...

    def __call__(
        self,
        source_rgb: np.ndarray,
        source_track: TrackResult,
        driver_rgb: np.ndarray,
        driver_track: TrackResult,
    ) -> np.ndarray: ...


FrameFn = Callable[[np.ndarray, TrackResult, np.ndarray, TrackResult], np.ndarray]


class Stateless:
    """Adapts a plain per-frame function to :class:`Method`."""

    def __init__(self, fn: FrameFn) -> None:
        self.fn = fn

    def start_clip(self, source_rgb: np.ndarray, source_track: TrackResult, fps: float = 30.0) -> None:
        return None

    def __call__(
        self,
        source_rgb: np.ndarray,
        source_track: TrackResult,
        driver_rgb: np.ndarray,
        driver_track: TrackResult,
    ) -> np.ndarray:
        return self.fn(source_rgb, source_track, driver_rgb, driver_track)


def static(
    source_rgb: np.ndarray, source_track: TrackResult, driver_rgb: np.ndarray, driver_track: TrackResult
) -> np.ndarray:
    """The source frame itself, at the driver frame's size."""
    return resize(np.ascontiguousarray(source_rgb[..., :3]), driver_rgb.shape[:2]).copy()


def bilinear_sample(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``image`` (H, W, C) at float pixel coordinates; edges are replicated."""
    h, w = image.shape[:2]
    img = image.astype(np.float32)
    x = np.clip(x, 0.0, w - 1.0)
    y = np.clip(y, 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.intp), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.intp), max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    fx = (x - x0)[..., None].astype(np.float32)
    fy = (y - y0)[..., None].astype(np.float32)
    top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
    bot = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
    return top * (1 - fy) + bot * fy


def _border_points(h: int, w: int) -> np.ndarray:
    xs, ys = [0.0, (w - 1) / 2, w - 1.0], [0.0, (h - 1) / 2, h - 1.0]
    return np.array([(x, y) for y in ys for x in xs if not (x == xs[1] and y == ys[1])], dtype=np.float64)


def piecewise_affine_map(
    src_points: np.ndarray, dst_points: np.ndarray, out_shape: tuple[int, int], src_shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Dense backward map (x, y in the source) for every output pixel.

    Triangulates ``dst_points`` (N, 2) plus the output's border points; a pixel inside
    triangle k maps to the same barycentric combination of the matching ``src_points``.
    Border points map to the source's border points (the frame stays put).
    """
    h, w = out_shape
    sh, sw = src_shape
    dst = np.concatenate([np.asarray(dst_points, np.float64)[:, :2], _border_points(h, w)])
    src = np.concatenate([np.asarray(src_points, np.float64)[:, :2], _border_points(sh, sw)])
    tri = Delaunay(dst)
    # one affine per triangle, dst pixel -> src point: src = c2 + [c0-c2, c1-c2] T (p - r)
    corners = src[tri.simplices]  # (S, 3, 2)
    edges = np.stack([corners[:, 0] - corners[:, 2], corners[:, 1] - corners[:, 2]], axis=2)  # (S, 2, 2)
    lin = np.nan_to_num(edges @ tri.transform[:, :2])  # (S, 2, 2); NaN only on degenerate slivers
    off = corners[:, 2] - np.einsum("sij,sj->si", lin, np.nan_to_num(tri.transform[:, 2]))
    yy, xx = np.mgrid[0:h, 0:w]
    xf, yf = xx.ravel().astype(np.float64), yy.ravel().astype(np.float64)
    simplex = tri.find_simplex(np.stack([xf, yf], axis=1))
    inside = simplex >= 0
    s = np.where(inside, simplex, 0)
    mx = lin[s, 0, 0] * xf + lin[s, 0, 1] * yf + off[s, 0]
    my = lin[s, 1, 0] * xf + lin[s, 1, 1] * yf + off[s, 1]
    # outside the hull cannot happen (border points span the frame); keep identity to be safe
    mx = np.where(inside, mx, xf * (sw - 1) / max(w - 1, 1))
    my = np.where(inside, my, yf * (sh - 1) / max(h - 1, 1))
    mapped = np.stack([mx, my], axis=1)
    return mapped[:, 0].reshape(h, w), mapped[:, 1].reshape(h, w)


def warp2d(
    source_rgb: np.ndarray, source_track: TrackResult, driver_rgb: np.ndarray, driver_track: TrackResult
) -> np.ndarray:
    """Piecewise-affine warp of the source onto the driver's landmarks (see module doc).

    Without a face in the driver frame (or the source) it returns the source unchanged.
    """
    source = np.ascontiguousarray(source_rgb[..., :3])
    out_shape = driver_rgb.shape[:2]
    if not (source_track.found and driver_track.found):
        return static(source, source_track, driver_rgb, driver_track)
    mx, my = piecewise_affine_map(source_track.landmarks, driver_track.landmarks, out_shape, source.shape[:2])
    out = bilinear_sample(source, mx, my)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class Flow3D:
    """The 3D-flow animator, one Animator and one stateful session per clip.

    It is built on the same source landmarks the other methods get (``source_track``), and
    ``smoothing=False`` (the default here) compares the warps on the same unsmoothed motion;
    ``smoothing=True`` evaluates the live configuration (One-Euro filtered motion).
    """

    def __init__(
        self, size: int = 256, smoothing: bool = False, generator: dict[str, Any] | None = None
    ) -> None:
        """``generator``: ``AnimatorConfig`` generator options (default: the warp fill)."""
        self.size = size
        self.smoothing = smoothing
        self.generator = dict(generator or {"generator": "warp"})
        self._session: Any = None  # rt_portrait.pipeline.AnimatorSession
        self._generator_obj: Any = None  # built once, shared by the clips' animators

    def start_clip(self, source_rgb: np.ndarray, source_track: TrackResult, fps: float = 30.0) -> None:
        """``fps``: the clip's frame rate (skipped frames arrive through :meth:`observe`)."""
        from rt_portrait.pipeline import Animator, AnimatorConfig
        from rt_portrait.tracking import SmoothingConfig

        self.close()
        config = AnimatorConfig(
            size=self.size, smoothing=SmoothingConfig(enabled=self.smoothing), **self.generator
        )
        if self._generator_obj is None:
            from rt_portrait.generator.select import build_generator

            self._generator_obj = build_generator(config.generator_spec())
        track = source_track if source_track.found else None
        animator = Animator(source_rgb, config, source_track=track, generator=self._generator_obj)
        session = animator.session(fps=fps)
        session.animate_track(source_track)  # prime: the source frame becomes the driver reference
        self._session = session

    def observe(self, driver_track: TrackResult) -> None:
        """A driver frame that is not evaluated: tracked motion and smoothing advance, no render."""
        if self._session is not None:
            self._session.drive_track(driver_track)

    def close(self) -> None:
        close = getattr(self._session, "close", None)
        if callable(close):
            close()
        self._session = None

    def __call__(
        self,
        source_rgb: np.ndarray,
        source_track: TrackResult,
        driver_rgb: np.ndarray,
        driver_track: TrackResult,
    ) -> np.ndarray:
        if self._session is None:
            raise RuntimeError("Flow3D: call start_clip(source, track) before feeding frames")
        image = np.asarray(self._session.animate_track(driver_track).image)
        return resize(image[..., :3], driver_rgb.shape[:2])


METHOD_NAMES: tuple[str, ...] = ("static", "warp2d", "flow3d")
GENERATOR_METHODS: tuple[str, ...] = ("refined", "refined2", "teacher", "animator")


def generator_method_options(name: str, options: dict[str, Any] | None = None) -> dict[str, Any]:
    """``AnimatorConfig`` generator options of a method (``options``: the harness's generator
    flags: the fusion weights apply to every diffusion method, ``generator`` and ``steps``
    define ``animator``)."""
    from rt_portrait.generator.select import TEACHER_STEPS, teacher_weights, weights_metadata

    opts = dict(options or {})
    # fusion weights, detail, texture, the compose and the network's engine apply to every
    # diffusion method
    keys = (
        "motion_weight",
        "identity_weight",
        "detail",
        "texture_gain",
        "source_detail",
        "still_sigma",
        "chroma_clamp",
        "frame_detail",
        "mouth",
        "shell",
        "fringe",
        "background_seen",
        "backend",
    )
    fusion: dict[str, Any] = {k: opts[k] for k in keys if k in opts}
    weights = opts.get("generator_weights")
    if name == "flow3d":  # the warp fill, composed the same way as the others
        warp_keys = ("frame_detail", "chroma_clamp", "mouth", "shell", "fringe", "background_seen")
        return {"generator": "warp", **{k: opts[k] for k in warp_keys if k in opts}}
    if name == "refined":
        return {"generator": "diffusion", "steps": 1, "generator_weights": weights, **fusion}
    if name == "refined2":
        return {"generator": "diffusion", "steps": 2, "generator_weights": weights, **fusion}
    if name == "teacher":
        path = Path(opts["teacher_weights"]) if opts.get("teacher_weights") else teacher_weights()
        if not path.is_file():
            raise FileNotFoundError(
                f"method 'teacher' needs the teacher's weights, and {path} does not exist"
            )
        steps = int(opts.get("teacher_steps") or weights_metadata(path).get("steps") or TEACHER_STEPS)
        return {"generator": "diffusion", "steps": steps, "generator_weights": str(path), **fusion}
    if name == "animator":
        chosen: dict[str, Any] = {
            k: opts[k] for k in ("generator", "steps", "generator_weights") if k in opts
        }
        return chosen | fusion
    raise ValueError(f"{name!r} is not a generator method")


def make_method(
    name: str, size: int = 256, smoothing: bool = False, generator: dict[str, Any] | None = None
) -> Method:
    """A fresh method object by name (``static``, ``warp2d``, ``flow3d``, ``refined``,
    ``refined2``, ``teacher``, ``animator``); ``generator``: the harness's generator options."""
    if name == "static":
        return Stateless(static)
    if name == "warp2d":
        return Stateless(warp2d)
    if name in ("flow3d", *GENERATOR_METHODS):
        return Flow3D(size=size, smoothing=smoothing, generator=generator_method_options(name, generator))
    raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHOD_NAMES + GENERATOR_METHODS)}")
