"""Offline jobs over the pipeline: animate a portrait with a driver video, edit a still."""

from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from rt_portrait.core.video import probe, read_frames, write_image, write_video
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.tracking import load_image


def animate_file(
    source: Path,
    driver: Path,
    output: Path,
    config: AnimatorConfig | None = None,
    *,
    max_frames: int | None = None,
    progress: bool = True,
) -> Path:
    """Animate ``source`` with ``driver``; H.264 at the driver's fps, with its audio."""
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
    try:
        return write_video(output, (session(f).image for f in bar), info.fps, audio_from=driver)
    finally:
        bar.close()
        session.close()


def edit_file(source: Path, output: Path, config: AnimatorConfig) -> Path:
    """Apply ``config.edits`` to the head of a still portrait."""
    animator = Animator(load_image(source), config, name=str(source))
    return write_image(output, animator.render_edits(config.edits).image)
