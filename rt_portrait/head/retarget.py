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

import numpy as np

from rt_portrait.core.types import Region

from .rotation import slerp_to_identity
from .template import Template, load_template
from .types import HeadState, Pose, RetargetConfig, Strengths

MODES = ("relative", "absolute")


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
        """Use ``driver`` as the neutral reference; None: the next driver frame becomes it."""
        self._reference = driver

    def _vertex_gain(self, st: Strengths) -> np.ndarray:
        key = (float(st.expression), float(st.eyes), float(st.mouth))
        if key != self._gain_key:  # strengths may change live; recompute only then
            g = np.full(len(self._mouth_w), key[0])
            g[self._eye_mask] *= key[1]
            g *= 1.0 - self._mouth_w + self._mouth_w * key[2]
            self._gain = g[:, None]
            self._gain_key = key
        return self._gain

    def __call__(self, driver: HeadState) -> HeadState:
        mode = self.config.mode
        if mode not in MODES:
            raise ValueError(f"retarget mode must be one of {MODES}, got {mode!r}")
        st = self.config.strengths
        if self._reference is None:
            self._reference = driver
        src = self.source
        gain = self._vertex_gain(st)
        s_pose = float(st.pose)
        if mode == "relative":
            ref = self._reference
            r_rel = driver.pose.rotation @ ref.pose.rotation.T
            if s_pose != 1.0:
                r_rel = slerp_to_identity(r_rel, s_pose)
            ratio = src.pose.scale / ref.pose.scale
            pose = Pose(
                rotation=r_rel @ src.pose.rotation,
                translation=src.pose.translation
                + s_pose * ratio * (driver.pose.translation - ref.pose.translation),
                scale=src.pose.scale * (driver.pose.scale / ref.pose.scale) ** s_pose,
            )
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
