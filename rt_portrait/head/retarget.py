"""Retargeting: driver motion onto the source identity.

Relative mode (default): the driver's motion relative to a reference frame (the first
driver frame unless ``set_reference`` chose one) is applied to the source:

* rotation: ``R_t = R_rel^s @ R_src`` with ``R_rel = R_drv @ R_ref.T``, the driver's
  rotation change as seen by the camera (for a near-frontal source, a driver yaw/pitch/roll
  change becomes the same change of the source's angles); ``^s`` is the pose strength
  (slerp from the identity rotation);
* translation and scale: the driver's change from the reference, in source pixels
  (``t_src + s * (t_drv - t_ref) * scale_src / scale_ref``, ``scale_src * (scale_drv /
  scale_ref) ** s``);
* expression: ``source expression + gain * (driver canonical - reference canonical)``.

The reference is the first driver frame (``config.reference = "first"``), the most frontal
frame of the first ``reference_window_s`` seconds (``"frontal"``: until the window closes the
reference moves to each more frontal frame) or the driver's typical face over that window
(``"median"``, see ``median_reference``: until the window closes it is recomputed with each
frame). The relative placement is bounded
(``max_shift``, ``max_zoom``, ``frame_margin``) so that a driver whose first frame is not
neutral, or who walks toward the camera, keeps the avatar in the frame.

Absolute mode: the driver's rotation (slerped from the source's by the pose strength),
the source's placement (translation and scale, so the head stays where the portrait's is),
and the driver's own expression offsets (driver canonical - driver neutral) on the source
identity. The driver neutral is ``driver.identity`` (a driver fitted with
``identity=None`` is its own neutral, so it carries no expression) unless
``driver_identity`` is given, e.g. ``template.vertices`` for offsets from the template mean
or a calibrated neutral of the driver.

Per-vertex expression gain = ``expression * eyes (on eyelid/iris vertices) * mix(1, mouth,
mouth weight)`` with the mouth weight 1 on the lips, the jaw weights below them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rt_portrait.core.types import Region

from .rotation import slerp_to_identity
from .template import Template, load_template
from .types import HeadState, Pose, RetargetConfig, Strengths

REFERENCE_WINDOW_S = {"first": 0.0, "frontal": 1.0, "median": 2.0}  # reference_window_s=None
MAX_WINDOW_FRAMES = 256  # bounds the median's window (2 s of a 120 fps camera)


def median_reference(window: Sequence[HeadState]) -> HeadState:
    """The typical head state of ``window``: the per-vertex median canonical shape, the
    medoid rotation (least summed angle to the others) and the median placement.

    A median outvotes anything that lasts under half the window: a hand over the mouth, a
    blink, a word or a glance away in the first frames no longer becomes the neutral that
    every later frame is measured from (with a shut-mouth hand as the reference, an opening
    mouth moved the avatar's lips apart by less than the tracker's noise).
    """
    if not window:
        raise ValueError("median_reference needs at least one head state")
    shape = np.median(np.stack([s.canonical() for s in window]), axis=0)
    rotations = np.stack([s.pose.rotation.reshape(9) for s in window])
    # tr(Ri^T Rj) is the sum of their elementwise products; the angle is arccos((tr - 1) / 2)
    angles = np.arccos(np.clip((rotations @ rotations.T - 1.0) / 2.0, -1.0, 1.0))
    medoid = window[int(np.argmin(angles.sum(axis=1)))]
    pose = Pose(
        rotation=medoid.pose.rotation.copy(),
        translation=np.median(np.stack([s.pose.translation for s in window]), axis=0),
        scale=float(np.median([s.pose.scale for s in window])),
    )
    return HeadState(
        pose=pose, identity=medoid.identity, expression=shape - medoid.identity, image_size=medoid.image_size
    )


def off_axis_deg(rotation: np.ndarray) -> float:
    """Degrees between the face's forward axis and the camera's (0 = frontal; roll ignored)."""
    return float(np.degrees(np.arccos(np.clip(rotation[2, 2], -1.0, 1.0))))


class Retargeter:
    """Maps driver head states onto the source identity; holds the driver reference frame."""

    def __init__(
        self,
        source: HeadState,
        config: RetargetConfig | None = None,
        template: Template | None = None,
        driver_identity: np.ndarray | None = None,
    ) -> None:
        self.source = source
        self.config = config if config is not None else RetargetConfig()
        self.template = template or load_template()
        self.driver_identity = (
            None if driver_identity is None else np.asarray(driver_identity, dtype=np.float64)
        )
        self._reference: HeadState | None = None
        self._reference_t0: float | None = None  # time of the first driver frame seen
        self._frames = 0  # frames seen since the reference was reset (time without ``t``)
        self._window: list[HeadState] = []  # the "median" reference's frames so far
        tpl = self.template
        self._eye_mask = tpl.regions == int(Region.EYES)
        mouth = np.asarray(tpl.groups["jaw_weights"], dtype=np.float64).copy()
        mouth[tpl.regions == int(Region.LIPS)] = 1.0
        self._mouth_w = mouth
        self._gain_key: tuple[float, float, float] | None = None
        self._gain = np.ones((len(tpl.vertices), 1))

    @property
    def reference(self) -> HeadState | None:
        return self._reference

    def set_reference(self, driver: HeadState | None) -> None:
        """Use ``driver`` as the neutral reference; None: the reference is chosen again from the
        next driver frames (see ``RetargetConfig.reference``)."""
        self._reference = driver
        self._reference_t0 = None if driver is None else float("-inf")  # a given one is final
        self._frames = 0
        self._window = []

    def _update_reference(self, driver: HeadState, t: float | None) -> None:
        cfg = self.config
        now = self._frames / 30.0 if t is None else float(t)
        self._frames += 1
        if self._reference is None:
            self._reference, self._reference_t0 = driver, now
            self._window = [driver]
            return
        window_s = cfg.reference_window_s
        if window_s is None:
            window_s = REFERENCE_WINDOW_S[cfg.reference]
        if self._reference_t0 is None or now - self._reference_t0 > window_s:
            return
        if cfg.reference == "frontal":
            if off_axis_deg(driver.pose.rotation) < off_axis_deg(self._reference.pose.rotation):
                self._reference = driver
        elif cfg.reference == "median" and len(self._window) < MAX_WINDOW_FRAMES:
            self._window.append(driver)
            self._reference = median_reference(self._window)

    def _bounded_placement(
        self, ref: HeadState, driver: HeadState, s_pose: float
    ) -> tuple[np.ndarray, float]:
        """Relative translation and scale of the source, bounded (see ``RetargetConfig``)."""
        cfg, src = self.config, self.source
        zoom = (driver.pose.scale / ref.pose.scale) ** s_pose
        if cfg.max_zoom is not None:
            zoom = float(np.clip(zoom, 1.0 / cfg.max_zoom, cfg.max_zoom))
        scale = src.pose.scale * zoom
        shift = s_pose * (src.pose.scale / ref.pose.scale) * (driver.pose.translation - ref.pose.translation)
        if cfg.max_shift is not None:
            limit = cfg.max_shift * src.pose.scale
            norm = float(np.linalg.norm(shift))
            if norm > limit:
                shift = shift * (limit / norm)
        translation = src.pose.translation + shift
        if cfg.frame_margin is not None:
            h, w = src.image_size
            m = cfg.frame_margin * scale
            for axis, extent in ((0, w), (1, h)):
                # keep the head centre inside (never further out than the source's own)
                c = float(src.pose.translation[axis])
                translation[axis] = float(np.clip(translation[axis], min(m, c), max(extent - m, c)))
        return translation, float(scale)

    def _vertex_gain(self, st: Strengths) -> np.ndarray:
        key = (float(st.expression), float(st.eyes), float(st.mouth))
        if key != self._gain_key:  # strengths may change live; recompute only then
            g = np.full(len(self._mouth_w), key[0])
            g[self._eye_mask] *= key[1]
            g *= 1.0 - self._mouth_w + self._mouth_w * key[2]
            self._gain = g[:, None]
            self._gain_key = key
        return self._gain

    def __call__(self, driver: HeadState, t: float | None = None) -> HeadState:
        """The target head state for one driver frame; ``t`` (seconds) times the choice of a
        frontal reference (without it frames count at 30 fps)."""
        self.config.validate()  # the mode and reference may have been changed live
        mode = self.config.mode
        st = self.config.strengths
        self._update_reference(driver, t)
        assert self._reference is not None
        src = self.source
        gain = self._vertex_gain(st)
        s_pose = float(st.pose)
        if mode == "relative":
            ref = self._reference
            r_rel = driver.pose.rotation @ ref.pose.rotation.T
            if s_pose != 1.0:
                r_rel = slerp_to_identity(r_rel, s_pose)
            translation, scale = self._bounded_placement(ref, driver, s_pose)
            pose = Pose(rotation=r_rel @ src.pose.rotation, translation=translation, scale=scale)
            offsets = driver.canonical() - ref.canonical()
        else:
            r_rel = driver.pose.rotation @ src.pose.rotation.T
            if s_pose != 1.0:
                r_rel = slerp_to_identity(r_rel, s_pose)
            pose = Pose(
                rotation=r_rel @ src.pose.rotation,
                translation=src.pose.translation.copy(),
                scale=src.pose.scale,
            )
            neutral = driver.identity if self.driver_identity is None else self.driver_identity
            offsets = driver.canonical() - neutral
        expression = src.expression + gain * offsets
        return HeadState(pose=pose, identity=src.identity, expression=expression, image_size=src.image_size)
