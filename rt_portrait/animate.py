"""Offline jobs over the pipeline: animate a portrait with a driver video, edit a still."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from rt_portrait.core.video import probe, read_frames, write_image, write_video
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.tracking import load_image


class NoDriverFaceError(ValueError):
    """No frame of the driver video has a face: there is no motion to transfer."""


@dataclass
class DriverCoverage:
    frames: int = 0
    with_face: int = 0


def animate_file(
    source: Path,
    driver: Path,
    output: Path,
    config: AnimatorConfig | None = None,
    *,
    max_frames: int | None = None,
    progress: bool = True,
    coverage: DriverCoverage | None = None,
) -> Path:
    """Animate ``source`` with ``driver``; H.264 at the driver's fps, with its audio.

    Raises ``NoDriverFaceError`` (and writes nothing) when no driver frame has a face;
    ``coverage`` receives how many frames had one."""
    if output.suffix.lower() not in (".mp4", ".mov", ".m4v"):
        raise ValueError(f"{output}: the output must be an .mp4, .mov or .m4v file")
    animator = Animator(load_image(source), config, name=str(source))
    info = probe(driver)
    session = animator.session(fps=float(info.fps))
    total = info.frames or None
    if max_frames is not None:
        total = min(total or max_frames, max_frames)
    frames = read_frames(driver, max_frames=max_frames)
    bar = tqdm(frames, total=total, unit="frame", desc=f"animate {Path(driver).name}", disable=not progress)
    seen = DriverCoverage()

    def animated() -> Iterator[np.ndarray]:
        for frame in bar:
            result = session(frame)
            seen.frames += 1
            seen.with_face += bool(result.face_found)
            yield result.image
        if seen.frames and not seen.with_face:  # raised inside the writer: no output is kept
            raise NoDriverFaceError(
                f"{driver}: no face in any of its {seen.frames} frames; the output would be the "
                "unchanged portrait, so none was written"
            )

    try:
        path = write_video(output, animated(), info.fps, audio_from=driver)
    finally:
        bar.close()
        session.close()
    if coverage is not None:
        coverage.frames, coverage.with_face = seen.frames, seen.with_face
    return path


def edit_file(source: Path, output: Path, config: AnimatorConfig) -> Path:
    """Apply ``config.edits`` to the head of a still portrait."""
    animator = Animator(load_image(source), config, name=str(source))
    return write_image(output, animator.render_edits(config.edits).image)
