"""One-Euro smoothing of head states (pose on the rotation group, expression), with the
filters of :mod:`rt_portrait.tracking.smoothing`; see there for units and timestamps."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
from scipy.spatial.transform import Rotation

from rt_portrait.head.types import HeadState, Pose
from rt_portrait.tracking.smoothing import EuroGain, FrameClock, SmoothingConfig


class HeadStateSmoother:
    """Smooths a head state's pose and expression separately (identity passes through).

    Rotation is filtered on the rotation group: the innovation is the rotation vector of the
    new rotation relative to the previous smoothed one, and the smoothed rotation advances
    by the filter's share of it. Translation is filtered in pixels with its speed measured
    in head sizes (divided by the pose scale), scale as its logarithm.
    """

    def __init__(self, config: SmoothingConfig | None = None, fps: float = 30.0) -> None:
        self.config = config or SmoothingConfig()
        self._clock = FrameClock(fps)
        self._rotation_gain = EuroGain(self.config.pose, speed_axis=-1)
        self._translation_gain = EuroGain(self.config.pose, speed_axis=-1)
        self._log_scale_gain = EuroGain(self.config.pose, speed_axis=None)
        self._expression_gain = EuroGain(self.config.expression, speed_axis=-1)
        self._last: HeadState | None = None

    def __call__(self, state: HeadState, t: float | None = None) -> HeadState:
        if not self.config.enabled:
            return state
        dt = self._clock.step(t)
        last = self._last
        if last is None or dt is None or last.expression.shape != state.expression.shape:
            for gain in (
                self._rotation_gain,
                self._translation_gain,
                self._log_scale_gain,
                self._expression_gain,
            ):
                gain.reset()
            self._last = state
            return state
        pose, prev = state.pose, last.pose
        relative = Rotation.from_matrix(prev.rotation.T @ pose.rotation).as_rotvec()
        step = self._rotation_gain(relative, dt)
        rotation = prev.rotation @ Rotation.from_rotvec(step).as_matrix()
        translation = prev.translation + self._translation_gain(
            np.asarray(pose.translation, dtype=np.float64) - prev.translation, dt, scale=max(pose.scale, 1e-9)
        )
        log_prev = math.log(prev.scale)
        log_scale = log_prev + float(self._log_scale_gain(np.array(math.log(pose.scale) - log_prev), dt))
        expression = last.expression + self._expression_gain(state.expression - last.expression, dt)
        smoothed = replace(
            state,
            pose=Pose(rotation=rotation, translation=translation, scale=math.exp(log_scale)),
            expression=expression.astype(state.expression.dtype, copy=False),
        )
        self._last = smoothed
        return smoothed

    def reset(self) -> None:
        self._clock.reset()
        self._last = None
