"""End-to-end pipeline, offline jobs and CLI on real faces (registry data only)."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rt_portrait.animate import animate_file
from rt_portrait.core.image import fit_long_side
from rt_portrait.core.video import probe, read_frames, write_image
from rt_portrait.generator import Generator, GeneratorInput, GeneratorOutput, WarpFillGenerator
from rt_portrait.head import fit_head
from rt_portrait.head.types import Edits, Pose
from rt_portrait.pipeline import Animator, AnimatorConfig, NoFaceError
from rt_portrait.tracking import track_image


@pytest.fixture(scope="module")
def animator(astronaut: np.ndarray) -> Animator:
    return Animator(astronaut, AnimatorConfig(size=256), name="astronaut")


def _yaw_2d(rgb: np.ndarray, shape: np.ndarray) -> float:
    """Yaw of the face in ``rgb`` from its re-tracked 2D landmarks alone.

    Orthographic pose fit of the subject's 3D shape (canonical frame) to the tracked x, y.
    mediapipe's depth channel is left out on purpose: it is predicted from appearance, and
    the shading of a warped face still looks frontal, so with it a 15 degree warp measures
    about 10 (the 2D landmarks themselves land within a pixel of the target mesh).
    """
    from scipy.optimize import least_squares
    from scipy.spatial.transform import Rotation

    from rt_portrait.head.rotation import euler_from_rotation

    track = track_image(rgb)
    assert track.found
    xy = track.landmarks[:, :2]
    init = fit_head(track.landmarks, track.image_size)

    def residual(p: np.ndarray) -> np.ndarray:
        rot = Rotation.from_rotvec(p[:3]).as_matrix()
        proj = p[3] * shape @ rot.T
        return (proj[:, :2] + p[4:6] - xy).ravel()

    p0 = np.concatenate(
        [Rotation.from_matrix(init.pose.rotation).as_rotvec(), [init.pose.scale], init.pose.translation[:2]]
    )
    fit = least_squares(residual, p0)
    return float(euler_from_rotation(Rotation.from_rotvec(fit.x[:3]).as_matrix())[0])


def test_identity_render_reproduces_source(animator: Animator, astronaut: np.ndarray) -> None:
    out = animator.render_edits(Edits()).image
    assert out.shape == astronaut.shape
    err = np.abs(out.astype(float) - astronaut.astype(float)).mean()
    assert err < 2.0, f"no-motion render differs from the source by {err:.2f} grey levels"


def test_yaw_edit_changes_retracked_yaw(animator: Animator, astronaut: np.ndarray) -> None:
    """yaw = 15 on the rendered image, re-tracked by the face mesh: +15 +- 2 degrees."""
    shape = animator.source_state.canonical()
    base = _yaw_2d(astronaut, shape)
    turned = _yaw_2d(animator.render_edits(Edits(yaw=15)).image, shape)
    assert turned - base == pytest.approx(15, abs=2.0)


def test_background_stays_and_hair_moves(animator: Animator, astronaut: np.ndarray) -> None:
    frame = animator.render_edits(Edits(yaw=15))
    flow = frame.fields.flow
    # image corners are background: no motion; the head shell (hair/forehead) moves
    assert float(flow[:, :8, :8].abs().max()) < 1e-3
    from rt_portrait.flow.types import Region

    shell = frame.fields.region_mask(Region.HEAD_SHELL)
    assert shell.any()
    assert float(flow[:, shell].norm(dim=0).mean()) > 0.5


def test_open_mouth_is_marked_for_the_generator(animator: Animator) -> None:
    from rt_portrait.flow.types import Region

    fields = animator.render_edits(Edits(jaw_open=1.0)).fields
    mouth = fields.region_mask(Region.MOUTH_INTERIOR)
    assert int(mouth.sum()) > 10, "an open mouth must show mouth-interior pixels"
    assert float(fields.visibility[0][mouth].mean()) < 0.5, (
        "the closed-mouth source has no correspondence for them"
    )


def test_open_mouth_is_painted_with_the_mouth_prior(animator: Animator) -> None:
    """The closed-mouth source has no interior: the fill is the prior in the subject's skin tone,
    not a black hole (and not the stretched lips)."""
    from rt_portrait.compose import crop_window, to_tensor
    from rt_portrait.flow.types import Region

    warp = Animator(animator.source, animator.config, generator=WarpFillGenerator())  # the prior is its
    frame = warp.render_edits(Edits(jaw_open=1.0))
    scene = animator.scene(animator.config.size)
    mouth = frame.fields.region_mask(Region.MOUTH_INTERIOR) & (frame.fields.visibility[0] < 0.2)
    assert int(mouth.sum()) > 10
    out = crop_window(to_tensor(frame.image), scene.window)[:, mouth]
    skin = scene.source_working[:, scene.source_labels == int(Region.SKIN)].median(dim=1).values
    ratio = (out.mean(dim=1) / skin).numpy()
    # the prior's mean ratio: not a dark cavity, and not a white slab (its teeth band alone is
    # ~1.1x the skin, so a hole showing more teeth than cavity can average a little above 1)
    assert (ratio > 0.45).all() and (ratio < 1.2).all(), ratio
    dark = Animator(animator.source, animator.config, generator=WarpFillGenerator(mouth_prior=None))
    dark_out = crop_window(to_tensor(dark.render_edits(Edits(jaw_open=1.0)).image), scene.window)[:, mouth]
    assert float(dark_out.mean()) < 0.5 * float(out.mean())


class _KeepOutput:
    """A generator that keeps its last output."""

    def __init__(self, generator: Generator) -> None:
        self.generator = generator

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        self.last = self.generator(inputs)
        return self.last


@pytest.mark.parametrize("kind", ["warp_fill", "model_on_warp_fill"])
def test_mouth_prior_is_painted_at_frame_resolution(
    grace_hopper: np.ndarray, kind: str, tmp_path: Path
) -> None:
    """A closed mouth opened wide: the frame shows the prior evaluated at its own pixels, not the
    working grid's painting upsampled (teeth a pixel tall there, soft and stepped); a model whose
    residual base is the warp fill passes the painting on (here one with a zero residual)."""
    import torch

    from rt_portrait.compose import upsample_to_frame
    from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator, save_weights
    from rt_portrait.generator.unet import ConditionalUNet, UNetConfig

    if kind == "warp_fill":
        inner: Generator = WarpFillGenerator()
    else:
        path = tmp_path / "zero.safetensors"
        save_weights(
            ConditionalUNet(UNetConfig(channels=8, groups=4, time_dim=16)),
            path,
            2.0,
            extra={"base": "warp_fill"},
        )
        inner = DiffusionGenerator(DiffusionConfig(weights=path, dtype="float32"))
    errors = {}
    for frame_detail in (True, False):
        gen = _KeepOutput(inner)
        a = Animator(grace_hopper, AnimatorConfig(size=256, frame_detail=frame_detail), generator=gen)
        image = a.render_edits(Edits(jaw_open=1.0)).image
        mouth = gen.last.mouth
        assert mouth is not None and mouth.frame.opening > 0.1
        window = a.scene(256).window
        v0, v1, u0, u1 = mouth.box
        hole = torch.zeros(1, 256, 256)
        hole[0, v0:v1, u0:u1] = mouth.hole
        up, (y0, y1, x0, x1) = upsample_to_frame(hole, window, image.shape[:2], box=mouth.box)
        xs = (torch.arange(x0, x1, dtype=torch.float32) + 0.5 - window.x0) * window.scale
        ys = (torch.arange(y0, y1, dtype=torch.float32) + 0.5 - window.y0) * window.scale
        y, x = torch.meshgrid(ys, xs, indexing="ij")
        fine = mouth.paint(x, y).permute(1, 2, 0).numpy() * 255
        inside = up[0].numpy() > 0.999
        assert inside.sum() > 50, int(inside.sum())
        errors[frame_detail] = float(np.abs(image[y0:y1, x0:x1][inside] - fine[inside]).mean())
    assert errors[True] < 2.0 and errors[False] > 2 * errors[True], errors


def test_source_without_face_names_the_file(tmp_path: Path) -> None:
    from rt_portrait.core.assets import pyfeat_file
    from rt_portrait.tracking import load_image

    path = pyfeat_file("free-mountain-vector-01.jpg")
    with pytest.raises(NoFaceError, match="free-mountain"):
        Animator(load_image(path), name=str(path))


@pytest.mark.parametrize("kind", ["gray", "rgba", "odd", "large"])
def test_source_formats(kind: str, astronaut: np.ndarray) -> None:
    from PIL import Image

    img: np.ndarray
    if kind == "gray":
        img = np.asarray(Image.fromarray(astronaut).convert("L"))
    elif kind == "rgba":
        img = np.dstack([astronaut, np.full(astronaut.shape[:2], 255, np.uint8)])
    elif kind == "odd":
        img = astronaut[3:400, 5:377]
    else:
        img = np.asarray(Image.fromarray(astronaut).resize((2400, 2400)))
    # the warp fill: this checks the source conversion, not the learned generator's residual
    out = Animator(img, AnimatorConfig(size=128, generator="warp")).render_edits(Edits(smile=0.5)).image
    assert out.shape[:2] == img.shape[:2] and out.shape[2] == 3 and out.dtype == np.uint8
    # the converted pixels: what the source shows, with only the face region edited
    expected = {
        "gray": np.repeat(img[..., None], 3, axis=2),
        "rgba": astronaut,
        "odd": img,
        "large": img,
    }[kind]
    diff = np.abs(out.astype(int) - expected.astype(int)).max(axis=-1)
    far = np.ones(img.shape[:2], dtype=bool)  # the frame's outer 12 %: the smile does not reach it
    m = int(0.12 * min(img.shape[:2]))
    far[m:-m, m:-m] = False
    assert diff[far].max() <= 3 and (diff[far] > 2).mean() < 1e-4  # resampling rounding only
    # and the whole frame stays the source but for the edited face (a few % of the pixels)
    assert diff.mean() < 1.0 and (diff > 2).mean() < 0.05
    if kind == "gray":  # a gray source stays gray
        assert np.abs(out[..., 0].astype(int) - out[..., 2].astype(int)).max() <= 1


def test_animate_keeps_audio_and_fps(tmp_path: Path, talking_video: Path, astronaut: np.ndarray) -> None:
    src = write_image(tmp_path / "portrait.png", astronaut[::2, ::2])
    out = animate_file(
        src, talking_video, tmp_path / "out.mp4", AnimatorConfig(size=128), max_frames=24, progress=False
    )
    info, driver = probe(out), probe(talking_video)
    assert info.fps == driver.fps
    assert info.has_audio
    assert (info.width, info.height) == (256, 256)
    frames = list(read_frames(out))
    assert len(frames) == 24
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
    # the face moves: output frames are not all the same
    assert np.abs(frames[0].astype(float) - frames[-1].astype(float)).mean() > 0.2


def test_animate_failure_leaves_no_file(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = write_image(tmp_path / "portrait.png", astronaut[::2, ::2])
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 20)
    with pytest.raises(ValueError, match=r"corrupt\.mp4"):
        animate_file(src, bad, tmp_path / "out.mp4", AnimatorConfig(size=128), progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.mp4", "portrait.png"]


def test_driver_without_face_holds_then_eases_back(animator: Animator, talking_video: Path) -> None:
    session = animator.session()
    frames = list(read_frames(talking_video, max_frames=30))
    for f in frames[:20]:
        last = session(f)
    assert last.face_found and last.head is not None
    driven = last.head.vertices()
    neutral = animator.source_state.vertices()
    # the talking driver has moved the head away from neutral (else this test shows nothing)
    start = float(np.abs(driven - neutral).mean())
    assert start > 0.2, start

    cfg = animator.config
    blank = np.full_like(frames[0], 40)
    gaps = []
    for _ in range(cfg.hold_frames + cfg.ease_frames + 5):
        out = session(blank)
        assert not out.face_found and out.head is not None
        gaps.append(float(np.abs(out.head.vertices() - neutral).mean()))
    # held: the last driven motion, unchanged, for hold_frames frames
    assert np.allclose(gaps[: cfg.hold_frames], start, rtol=1e-6, atol=1e-9)
    # then eased: strictly closer to neutral every frame, and there at the end of the ease
    easing = gaps[cfg.hold_frames - 1 : cfg.hold_frames + cfg.ease_frames]
    assert all(b < a for a, b in itertools.pairwise(easing)), easing
    assert max(gaps[cfg.hold_frames + cfg.ease_frames - 1 :]) < 1e-6
    back = session(frames[20])
    assert back.face_found, "tracking recovers when the face returns"


def test_cli_track_json(tmp_path: Path, astronaut: np.ndarray) -> None:
    img = write_image(tmp_path / "a.png", astronaut)
    mirrored = write_image(tmp_path / "m.png", astronaut[:, ::-1])
    rows = [
        json.loads(
            subprocess.run(
                [sys.executable, "-m", "rt_portrait.cli", "track", str(p), "--json"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )[0]
        for p in (img, mirrored)
    ]
    assert rows[0]["found"] and rows[1]["found"]
    assert rows[0]["yaw"] == pytest.approx(-rows[1]["yaw"], abs=2.0)
    for key in ("pitch", "roll", "scale", "expression"):
        assert key in rows[0]


def test_cli_edit_and_errors(tmp_path: Path, astronaut: np.ndarray) -> None:
    src = write_image(tmp_path / "a.png", astronaut[::2, ::2])
    out = tmp_path / "edited.png"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rt_portrait.cli",
            "edit",
            "--source",
            str(src),
            "--yaw",
            "15",
            "--smile",
            "0.6",
            "-o",
            str(out),
            "--size",
            "128",
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert out.exists()
    notimg = tmp_path / "notes.png"
    notimg.write_text("not an image")
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rt_portrait.cli",
            "edit",
            "--source",
            str(notimg),
            "-o",
            str(tmp_path / "x.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "notes.png" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "x.png").exists()
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "rt_portrait.cli",
            "edit",
            "--source",
            str(src),
            "--jaw-open",
            "3",
            "-o",
            str(tmp_path / "y.png"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 2 and "jaw_open" in r.stderr


def test_demo_writes_video_and_sheet(tmp_path: Path) -> None:
    from rt_portrait.demo import run_demo

    video, sheet = run_demo(tmp_path, size=128, seconds=1.0, progress=False)
    assert probe(video).frames == 25
    assert sheet.stat().st_size > 10_000


def test_source_track_is_used_and_checked(astronaut: np.ndarray) -> None:
    track = track_image(astronaut)
    shifted = Animator(astronaut, AnimatorConfig(size=128), source_track=track)
    assert np.allclose(
        shifted.source_state.vertices(), fit_head(track.landmarks, track.image_size).vertices(), atol=1e-6
    )
    with pytest.raises(ValueError, match="source_track"):
        Animator(astronaut[:300], AnimatorConfig(size=128), source_track=track)


def test_blink_closes_the_eyes_in_the_image(animator: Animator, astronaut: np.ndarray) -> None:
    """blink = 1 on the rendered image, re-tracked: the eyelid gaps shrink; a one-eyed blink
    leaves the other eye open (before the irises were hidden behind closing lids, the warp
    blended lid and iris and the eyes stayed open)."""
    groups = animator.template.groups

    def gaps(img: np.ndarray) -> np.ndarray:
        lm = track_image(img).landmarks
        return np.array(
            [
                np.linalg.norm(
                    lm[groups[f"{s}_eye_upper"], :2] - lm[groups[f"{s}_eye_lower"], :2], axis=1
                ).mean()
                for s in ("left", "right")
            ]
        )

    open_gaps = gaps(astronaut)
    both = gaps(animator.render_edits(Edits(blink_left=1, blink_right=1)).image) / open_gaps
    left = gaps(animator.render_edits(Edits(blink_left=1)).image) / open_gaps
    assert both.mean() < 0.85, f"eyelid gaps after a blink: {both} of the open ones"
    assert left[0] < 0.85 and left[1] > 0.95, f"left-eye blink: {left}"


def test_an_opened_mouth_has_a_crisp_smooth_outline_in_the_frame(grace_hopper: np.ndarray) -> None:
    """A shut mouth opened: the teeth style's opening is an anti-aliased curve, redrawn in the
    frame with a one-pixel edge; the strips style's is the working grid's pixels upsampled
    (a ramp two frame pixels wide per edge, stepping by two pixels at a time)."""
    import torch

    from rt_portrait.compose import mouth_detail, upsample_to_frame

    outline = {}
    for style in ("teeth", "strips"):
        gen = _KeepOutput(WarpFillGenerator(mouth_style=style))
        a = Animator(grace_hopper, AnimatorConfig(size=256), generator=gen)
        a.render_edits(Edits(jaw_open=1.0))
        mouth, window = gen.last.mouth, a.scene(256).window
        assert mouth is not None and mouth.crisp == (style == "teeth")
        _, change, _ = mouth_detail(mouth, window, grace_hopper.shape[:2])
        hole = torch.zeros(1, 256, 256)
        v0, v1, u0, u1 = mouth.box
        hole[0, v0:v1, u0:u1] = mouth.hole
        up, _ = upsample_to_frame(hole, window, grace_hopper.shape[:2], box=mouth.box)
        edge = (up + change)[0].numpy()  # the weight the frame paints the mouth with
        cols = np.flatnonzero((edge > 0.5).any(0))
        cols = cols[len(cols) // 10 : len(cols) - len(cols) // 10]  # clear of the corners
        top = np.array([np.argmax(edge[:, c] > 0.5) for c in cols])
        ramp = ((edge > 0.05) & (edge < 0.95)).sum(0)[cols].mean()  # pixels between in and out
        outline[style] = (float(ramp), int(np.abs(np.diff(top)).max()))
    assert outline["teeth"][0] < 3 and outline["teeth"][1] <= 1, outline
    assert outline["strips"][0] > 4 and outline["strips"][1] >= 2, outline


def test_warp_fill_fits_the_shell_to_the_person_and_generic_keeps_the_template(
    animator: Animator, astronaut: np.ndarray
) -> None:
    from rt_portrait.head import build_shell
    from rt_portrait.head.shell import SHELL_FIT_LIMITS

    assert animator.shell_mode() == "fitted" and animator.shell_fit is not None
    lo, hi = SHELL_FIT_LIMITS
    fit = animator.shell_fit
    # the helmet and suit reach well past the generic skull on both sides (symmetric portrait)
    assert fit.left > 1.1 and fit.right > 1.1 and lo <= fit.top <= hi
    assert fit.left == pytest.approx(fit.right, abs=0.15)
    generic = Animator(astronaut, AnimatorConfig(size=256, shell="generic", fringe=False))
    assert generic.shell_mode() == "generic" and generic.shell_fit is None
    np.testing.assert_array_equal(generic.shell.points, build_shell(generic.template).points)
    assert np.ptp(animator.shell.points[:, 0]) > 1.1 * np.ptp(generic.shell.points[:, 0])
    with pytest.raises(ValueError, match="shell must be one of"):
        Animator(astronaut, AnimatorConfig(size=256, shell="oval"))


def test_cli_shell_choice_reaches_the_render(tmp_path: Path, astronaut: np.ndarray) -> None:
    """``--shell generic`` and ``--shell fitted`` turn the astronaut's helmet differently;
    ``auto`` is ``fitted`` on the warp fill."""
    from rt_portrait.core.image import load_image

    src = write_image(tmp_path / "a.png", astronaut[::2, ::2])
    outs = {}
    for shell in ("generic", "fitted", "auto"):
        outs[shell] = tmp_path / f"{shell}.png"
        cmd = [sys.executable, "-m", "rt_portrait.cli", "edit", "--source", str(src), "--yaw", "30"]
        cmd += ["--generator", "warp", "--shell", shell, "-o", str(outs[shell]), "--size", "128"]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    img = {k: load_image(v).astype(float) for k, v in outs.items()}
    assert np.abs(img["generic"] - img["fitted"]).mean() > 0.5
    np.testing.assert_array_equal(img["auto"], img["fitted"])


def test_a_source_looking_aside_turned_to_the_camera_takes_the_far_cheek_from_the_near_one(
    animator: Animator, astronaut: np.ndarray
) -> None:
    """The portrait turned 35° aside is the source; turned back, the far half of its face is
    one the source hides or shows edge-on. Taken from the mirror side, the face re-tracks
    closer to the real (frontal) portrait than the warp of that sliver, which ghosts (a
    seam through the far eye)."""
    aside = animator.render_edits(Edits(yaw=35)).image
    mirrored = Animator(aside, AnimatorConfig(generator="warp"))
    assert mirrored.scene(256).mirror is not None  # the source looks aside: the mirror is offered
    warp_only = Animator(aside, generator=WarpFillGenerator(mirror_face=False))
    back = mirrored.render_edits(Edits(yaw=-35)).image
    plain = warp_only.render_edits(Edits(yaw=-35)).image
    truth = track_image(astronaut).landmarks[:, :2]

    def err(img: np.ndarray) -> float:
        track = track_image(img)
        assert track.found
        return float(np.linalg.norm(track.landmarks[:, :2] - truth, axis=1).mean())

    changed = np.abs(back.astype(int) - plain.astype(int)).max(2) > 8
    assert changed.sum() > 300, "the mirror changed too little of the face to test"
    assert err(back) < 0.85 * err(plain), (err(back), err(plain))
    # a near-frontal source shows both halves: no mirror, the warp fill as before
    assert animator.scene(256).mirror is None


def test_a_head_that_moved_leaves_the_wall_not_its_old_head(astronaut: np.ndarray) -> None:
    """The astronaut turned 30° and moved 40 px: where her head was and is no more, the
    frame shows the wall, not her old hair stretched over it (the elastic background samples
    the old head there). Off (no fringe, background visibility and wall fill as before
    session 21), the old hair stays: the output there is much closer to the source's head."""
    from scipy import ndimage

    from rt_portrait.head import apply_edits

    src = fit_long_side(astronaut, 256)
    left_behind_gap = {}
    for on in (False, True):
        a = Animator(
            src,
            AnimatorConfig(size=128, fringe=on, background_seen=on),
            generator=WarpFillGenerator(wall_from_head=on),
        )
        s = apply_edits(a.source_state, Edits(yaw=30), a.template)
        moved = replace(s, pose=Pose(s.pose.rotation, s.pose.translation + [40.0, 0.0, 0.0], s.pose.scale))
        img, fields, _ = a.render(moved)
        _, still, _ = a.render(a.source_state)

        def frame_mask(m: torch.Tensor, shape: tuple[int, ...] = img.shape[:2]) -> np.ndarray:
            return F.interpolate(m.float()[None, None], size=shape)[0, 0].numpy() > 0

        left = frame_mask(still.labels > 0) & ~ndimage.binary_dilation(
            frame_mask(fields.labels > 0), iterations=6
        )
        assert left.sum() > 2000
        left_behind_gap[on] = float(np.median(np.abs(img.astype(float) - src.astype(float)).mean(2)[left]))
    assert left_behind_gap[True] > left_behind_gap[False] + 6, left_behind_gap


def test_fringe_and_background_options_reach_the_animator(astronaut: np.ndarray) -> None:
    """``--fringe off`` leaves the fitted skull alone (fewer shell points: the astronaut's hair
    beyond it is not attached); ``auto`` is what the generator says (a learned one: its
    weights' record), and on for a generator that says nothing (the warp fill); on and off
    are as asked. The fringe also grows the generic skull (a learned model's)."""
    import argparse

    from rt_portrait.generator.select import add_generator_arguments, generator_options

    parser = argparse.ArgumentParser()
    add_generator_arguments(parser)
    src = fit_long_side(astronaut, 256)

    def animator(*argv: str, generator: Generator | None = None) -> Animator:
        opts = generator_options(parser.parse_args(["--generator", "warp", *argv]))
        return Animator(src, AnimatorConfig(size=128, **opts), generator=generator)

    with_fringe, without = animator(), animator("--fringe", "off")
    assert len(with_fringe.shell.points) > len(without.shell.points) + 50
    assert with_fringe.serves_with("background_seen")
    assert not animator("--background-seen", "off").serves_with("background_seen")
    generic, bare = animator("--shell", "generic"), animator("--shell", "generic", "--fringe", "off")
    assert generic.shell_fit is None and len(generic.shell.points) > len(bare.shell.points) + 50

    class Other:  # a generator that is not the warp fill, e.g. a learned one
        background_seen = False

        def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
            return GeneratorOutput(face=inputs.warped, alpha=torch.zeros_like(inputs.warped[:1]))

    assert not animator(generator=Other()).serves_with("background_seen")
    assert animator(generator=Other()).serves_with("fringe")  # it says nothing of the fringe
    assert animator("--background-seen", "on", generator=Other()).serves_with("background_seen")
    Other.background_seen = True
    assert animator(generator=Other()).serves_with("background_seen")
    with pytest.raises(ValueError, match="unknown option"):
        with_fringe.serves_with("fringes")
