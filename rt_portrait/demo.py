"""``rt-portrait demo``: the embedded default portrait animated by a scripted motion.

Writes ``demo.mp4`` (talk, blink, turn, nod, smile) and ``edits.png``, a sheet of the edited
head meshes drawn over the portrait above the rendered results.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from rt_portrait.core.assets import default_portrait
from rt_portrait.core.video import atomic_output, write_video
from rt_portrait.generator.select import generator_kind
from rt_portrait.head.types import Edits
from rt_portrait.pipeline import Animator, AnimatorConfig

FPS = 25

SHEET = [
    ("source", Edits()),
    ("turn (yaw 20)", Edits(yaw=20)),
    ("nod (pitch 12)", Edits(pitch=12)),
    ("blink", Edits(blink_left=1, blink_right=1)),
    ("smile 0.8", Edits(smile=0.8)),
    ("open mouth", Edits(jaw_open=1)),
]


def scripted_edits(t: float, duration: float) -> Edits:
    """Talk, blink, turn, nod and smile, as smooth functions of time (seconds)."""
    u = t / duration
    bump = lambda a, b: max(0.0, math.sin(math.pi * (u - a) / (b - a))) if a <= u <= b else 0.0  # noqa: E731
    talk = bump(0.0, 0.35) * 0.5 * (1 - math.cos(2 * math.pi * 3.0 * t))
    blink_phase = (t % 2.2) / 0.25
    blink = math.sin(math.pi * blink_phase) if blink_phase < 1 else 0.0
    return Edits(
        jaw_open=0.8 * talk,
        blink_left=blink,
        blink_right=blink,
        yaw=22 * bump(0.3, 0.65) * math.sin(2 * math.pi * (u - 0.3) / 0.35),
        pitch=10 * bump(0.55, 0.8) * math.sin(2 * math.pi * (u - 0.55) / 0.25),
        smile=0.9 * bump(0.7, 1.0),
        brow_raise=0.6 * bump(0.75, 0.95),
    )


def write_sheet(animator: Animator, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(SHEET)
    fig, axes = plt.subplots(2, n, figsize=(2.6 * n, 5.6), dpi=110)
    tri = animator.template.triangles
    for i, (title, edits) in enumerate(SHEET):
        frame = animator.render_edits(edits)
        assert frame.head is not None  # an edit of the source always has a head
        verts = frame.head.vertices()
        ax = axes[0, i]
        ax.imshow(animator.source)
        ax.triplot(verts[:, 0], verts[:, 1], tri, lw=0.25, color="cyan")
        ax.set_title(title, fontsize=9)
        axes[1, i].imshow(frame.image)
        for a in axes[:, i]:
            x0, y0 = verts[:, :2].min(0)
            x1, y1 = verts[:, :2].max(0)
            m = 0.6 * max(x1 - x0, y1 - y0)
            a.set_xlim(x0 - m, x1 + m)
            a.set_ylim(y1 + m, y0 - m)
            a.axis("off")
    axes[0, 0].text(
        0, -0.08, "edited head mesh over the source", transform=axes[0, 0].transAxes, fontsize=8, va="top"
    )
    label = "3D-flow warp" if generator_kind(animator.generator) == "warp" else "3D-flow warp + generator"
    axes[1, 0].text(
        0, -0.08, f"rendered by the {label}", transform=axes[1, 0].transAxes, fontsize=8, va="top"
    )
    fig.tight_layout()
    with atomic_output(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return path


def run_demo(
    output: Path,
    portrait: str = "astronaut",
    size: int = 256,
    seconds: float = 6.0,
    progress: bool = True,
    generator: dict[str, Any] | None = None,
) -> list[Path]:
    """``generator``: ``AnimatorConfig`` generator options (default: ``auto``)."""
    animator = Animator(
        default_portrait(portrait), AnimatorConfig(size=size, **(generator or {})), name=portrait
    )
    output.mkdir(parents=True, exist_ok=True)
    sheet = write_sheet(animator, output / "edits.png")
    n = round(seconds * FPS)

    def frames() -> Iterator[np.ndarray]:
        history = None  # each frame's output is the next one's history, as in a live session
        for i in tqdm(range(n), desc="demo", unit="frame", disable=not progress):
            r = animator.render_frame(
                animator.target_state(scripted_edits(i / FPS, seconds)), history=history
            )
            history = r.history
            yield r.image

    video = write_video(output / "demo.mp4", frames(), FPS)
    return [video, sheet]
