"""Face tracking with mediapipe's face mesh (478 landmarks, iris included).

Two modes (``TrackerConfig.static_image``):

* video (default): mediapipe's own detection-then-tracking graph. The face detector runs
  when fewer than ``max_faces`` faces are tracked; otherwise each face's region of interest
  is predicted from its landmarks in the previous frame. A lost face is detected again as
  soon as it re-enters. Webcam use: faces are close (mediapipe's short-range detector).
* static image: every call is independent. The full-range face detector (which also finds
  small faces in group photos) proposes boxes, the face chosen by ``select`` is cropped from
  the full-resolution image and meshed there, so huge images keep their detail. If the
  detector finds nothing, the mesh graph's own detector gets the whole image as a fallback.

Landmarks come back in the input image's pixels (x right, y down, z away from the camera,
z scaled like x), whatever downscaling was used for detection. No face (or an image too
small to hold one) is a ``TrackResult`` with ``found=False`` and a message, never an
exception; a malformed input array, or one beyond ``TrackerConfig.limits`` (too large to be
a sensible frame), raises ``ImageError`` (a caller bug). A tracker holds
mediapipe graphs and per-stream state: use one per stream, from one thread at a time.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any

import numpy as np

from rt_portrait.core.image import ImageError, ImageLimits, check_size, fit_long_side, resize, to_rgb
from rt_portrait.tracking.types import NUM_LANDMARKS, FaceObservation, TrackResult

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels

SELECT_MODES = ("largest", "central")
# mediapipe prints these start-up lines from C++ on every new graph; they are not actionable
_NATIVE_NOISE = re.compile(
    r"Created TensorFlow Lite XNNPACK delegate|All log messages before absl::InitializeLog"
    r"|inference_feedback_manager\.cc|landmark_projection_calculator\.cc"
)
_CROP_CONTEXT = 2.0  # crop side / detector box side: the mesh's own detector needs context
_CROP_MAX_SIDE = 512  # the mesh works at 192 px; more crop resolution buys nothing
_STICKY_IOU = 0.3  # video: a face overlapping the previous choice this much is the same face


@dataclass
class TrackerConfig:
    """How to find and follow a face.

    ``select`` picks one face when several are seen: "largest" (box area) or "central"
    (box centre nearest the image centre). In video mode with ``sticky`` the chosen face is
    kept while it is tracked, so a second person entering does not steal the stream; the
    rule applies again once it is lost. ``max_faces`` > 1 is what makes selection possible
    (and costs ~1.5 ms per frame in video mode, because detection keeps running while fewer
    faces are tracked). Frames larger than ``max_side`` are downscaled for mediapipe.
    """

    static_image: bool = False
    select: str = "largest"
    max_faces: int = 4
    min_detection_confidence: float = 0.5
    min_tracking_confidence: float = 0.5
    max_side: int = 1280
    limits: ImageLimits = field(default_factory=ImageLimits)
    sticky: bool = True
    quiet: bool = True  # drop mediapipe's C++ start-up log lines (other lines pass through)

    def validate(self) -> None:
        if self.select not in SELECT_MODES:
            raise ValueError(f"TrackerConfig.select must be one of {SELECT_MODES}, got {self.select!r}")
        if not 1 <= int(self.max_faces) <= 16:
            raise ValueError(f"TrackerConfig.max_faces must be in [1, 16], got {self.max_faces}")
        for name in ("min_detection_confidence", "min_tracking_confidence"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"TrackerConfig.{name} must be in [0, 1], got {value}")
        if self.max_side < 64:
            raise ValueError(f"TrackerConfig.max_side must be at least 64 px, got {self.max_side}")


# File descriptor 2 belongs to the whole process. Trackers that start at the same time in
# different threads (the live server's sessions) must not interleave their swaps: one
# thread's restore would put back another's temporary file, and the process's log would go
# on into a deleted file. One process-wide lock serialises the swaps (a graph start, ~0.1 s).
_STDERR_SWAP = threading.RLock()


@contextmanager
def _filtered_native_stderr(enabled: bool) -> Iterator[None]:
    """Capture file descriptor 2 (where mediapipe's C++ logs go) and re-emit all but the
    known start-up noise. Used only around graph creation and a graph's first frame; other
    threads' output meanwhile is re-emitted too (late, not lost)."""
    if not enabled:
        yield
        return
    with _STDERR_SWAP:
        try:
            sys.stderr.flush()
            saved = os.dup(2)
        except (OSError, ValueError):  # no real stderr (embedded interpreters): nothing to filter
            yield
            return
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                with contextlib.suppress(ValueError, OSError):
                    sys.stderr.flush()  # what other threads wrote meanwhile goes to the sink
                os.dup2(saved, 2)
                os.close(saved)
                sink.seek(0)
                text = sink.read().decode("utf-8", errors="replace")
                kept = [line for line in text.splitlines(keepends=True) if not _NATIVE_NOISE.search(line)]
                if kept:
                    sys.stderr.write("".join(kept))
                    sys.stderr.flush()


def _box_of(points: np.ndarray) -> Box:
    x0, y0 = points[:, 0].min(), points[:, 1].min()
    x1, y1 = points[:, 0].max(), points[:, 1].max()
    return float(x0), float(y0), float(x1), float(y1)


def _area(box: Box) -> float:
    return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _iou(a: Box, b: Box) -> float:
    inter = _area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = _area(a) + _area(b) - inter
    return inter / union if union > 0 else 0.0


def _selection_order(boxes: list[Box], select: str, image_size: tuple[int, int]) -> list[int]:
    """Indices of ``boxes``, best first, by the selection rule."""
    height, width = image_size
    cx, cy = width / 2.0, height / 2.0

    def key(i: int) -> float:
        box = boxes[i]
        if select == "largest":
            return -_area(box)
        return float(np.hypot((box[0] + box[2]) / 2.0 - cx, (box[1] + box[3]) / 2.0 - cy))

    return sorted(range(len(boxes)), key=key)


# Wire layout of one NormalizedLandmark holding only x, y, z: field tag 1 (length-delimited,
# 15 bytes), then tags for x, y, z as 32-bit floats. Reading the serialized list with numpy
# costs ~0.03 ms instead of ~0.4 ms for 478 Python attribute reads per frame.
_LANDMARK_RECORD = 17
_LANDMARK_TAGS = {0: 0x0A, 1: 0x0F, 2: 0x0D, 7: 0x15, 12: 0x1D}


def _landmark_array(face: Any) -> np.ndarray:
    """(N, 3) float64 normalised landmarks of a NormalizedLandmarkList."""
    raw = face.SerializeToString()
    if len(raw) % _LANDMARK_RECORD == 0:
        records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _LANDMARK_RECORD)
        if all(np.all(records[:, col] == tag) for col, tag in _LANDMARK_TAGS.items()):
            xyz = np.ascontiguousarray(records[:, [3, 4, 5, 6, 8, 9, 10, 11, 13, 14, 15, 16]])
            return xyz.view("<f4").astype(np.float64)
    # other layouts (e.g. visibility set): the slow, general path
    return np.array([(p.x, p.y, p.z) for p in face.landmark], dtype=np.float64).reshape(-1, 3)


def _mesh_points(
    result: Any, scale_x: float, scale_y: float, offset: tuple[float, float] = (0.0, 0.0)
) -> list[np.ndarray]:
    """mediapipe normalised landmarks -> (478, 3) float32 pixel arrays.

    x, y are fractions of the processed image; z is relative depth in units of its width.
    ``scale_x``/``scale_y`` are the processed image's width/height in target pixels.
    """
    faces = []
    for face in result.multi_face_landmarks or []:
        pts = _landmark_array(face)
        if pts.shape[0] != NUM_LANDMARKS:  # refine_landmarks=True always gives 478
            continue
        pts[:, 0] = pts[:, 0] * scale_x + offset[0]
        pts[:, 1] = pts[:, 1] * scale_y + offset[1]
        pts[:, 2] = pts[:, 2] * scale_x
        faces.append(pts.astype(np.float32))
    return faces


class FaceTracker:
    """Detect and track one face per frame; see the module docstring for the modes."""

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.config.validate()
        # imported here: mediapipe takes ~1 s to import and is only needed once tracking starts
        from mediapipe.python.solutions import face_detection, face_mesh

        self._modules = (face_mesh, face_detection)
        # graphs are built on the first frame, inside the log filter: mediapipe loads its
        # models on worker threads after construction, so only the first frame's wait covers it
        self._mesh: Any = None
        self._detector: Any = None
        self._warm = False  # graphs built and a frame processed since the last (re)start
        self._previous_box: Box | None = None
        self._closed = False

    def _start_graphs(self) -> None:
        face_mesh, face_detection = self._modules
        cfg = self.config
        if self._mesh is None:
            self._mesh = face_mesh.FaceMesh(
                static_image_mode=cfg.static_image,
                max_num_faces=cfg.max_faces,
                refine_landmarks=True,
                min_detection_confidence=cfg.min_detection_confidence,
                min_tracking_confidence=cfg.min_tracking_confidence,
            )
        else:
            self._mesh.reset()  # after reset(): restart the graph, dropping its tracked ROIs
        if cfg.static_image and self._detector is None:
            # full-range model: finds faces down to ~2% of the image width (group photos)
            self._detector = face_detection.FaceDetection(
                model_selection=1, min_detection_confidence=cfg.min_detection_confidence
            )

    # -- lifecycle -------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget the tracked face: the next frame starts with detection again."""
        self._check_open()
        self._previous_box = None
        self._warm = False  # the graph restarts with the next frame

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for graph in (self._mesh, self._detector):
            if graph is not None:
                graph.close()
        self._mesh = self._detector = None

    def __enter__(self) -> FaceTracker:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("FaceTracker is closed")

    # -- tracking --------------------------------------------------------------------------
    def track(self, rgb: Any, *, name: str = "frame") -> TrackResult:
        """Track one frame. ``rgb``: any format ``to_rgb`` accepts (raises ImageError if not)."""
        self._check_open()
        image = to_rgb(rgb, name=name)
        height, width = image.shape[:2]
        try:
            check_size(image, self.config.limits, name)
        except ImageError as exc:
            if min(height, width) >= self.config.limits.min_side:
                raise  # too large: refuse loudly, the caller passed the wrong thing
            self._previous_box = None
            return TrackResult(found=False, face=None, image_size=(height, width), message=str(exc))
        with _filtered_native_stderr(self.config.quiet and not self._warm):
            if not self._warm:
                self._start_graphs()
            if self.config.static_image:
                result = self._track_static(image)
            else:
                result = self._track_video(image)
        self._warm = True
        return result

    def _process_mesh(self, image: np.ndarray) -> Any:
        return self._mesh.process(image)

    def _track_video(self, image: np.ndarray) -> TrackResult:
        height, width = image.shape[:2]
        small = fit_long_side(image, self.config.max_side)
        faces = _mesh_points(self._process_mesh(small), float(width), float(height))
        if not faces:
            self._previous_box = None
            return TrackResult(
                found=False,
                face=None,
                image_size=(height, width),
                num_faces=0,
                message="no face found in the frame",
            )
        boxes = [_box_of(f) for f in faces]
        chosen = None
        if self.config.sticky and self._previous_box is not None:
            overlaps = [_iou(b, self._previous_box) for b in boxes]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= _STICKY_IOU:
                chosen = best
        if chosen is None:
            chosen = _selection_order(boxes, self.config.select, (height, width))[0]
        self._previous_box = boxes[chosen]
        # the legacy graph exposes no per-face score; faces it returns passed min_tracking_confidence
        face = FaceObservation(landmarks=faces[chosen], bbox=boxes[chosen], score=1.0)
        return TrackResult(
            found=True, face=face, image_size=(height, width), num_faces=len(faces), boxes=tuple(boxes)
        )

    def _detect(self, small: np.ndarray, width: int, height: int) -> list[tuple[Box, float]]:
        assert self._detector is not None
        result = self._detector.process(small)
        found = []
        for det in result.detections or []:
            rel = det.location_data.relative_bounding_box
            box = (
                rel.xmin * width,
                rel.ymin * height,
                (rel.xmin + rel.width) * width,
                (rel.ymin + rel.height) * height,
            )
            found.append((box, float(det.score[0]) if det.score else 0.0))
        return found

    def _mesh_in_crop(self, image: np.ndarray, box: Box) -> np.ndarray | None:
        """Mesh the face in ``box`` from a square crop of the full-resolution image."""
        height, width = image.shape[:2]
        cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
        side = _CROP_CONTEXT * max(box[2] - box[0], box[3] - box[1])
        x0, y0 = round(cx - side / 2.0), round(cy - side / 2.0)
        n = max(round(side), 16)
        # pad with edge pixels where the crop leaves the image (faces at the border)
        crop = np.empty((n, n, 3), dtype=np.uint8)
        xs = np.clip(np.arange(x0, x0 + n), 0, width - 1)
        ys = np.clip(np.arange(y0, y0 + n), 0, height - 1)
        crop[:] = image[ys[:, None], xs[None, :]]
        factor = min(1.0, _CROP_MAX_SIDE / n)
        if factor < 1.0:
            m = max(16, round(n * factor))
            crop = resize(crop, (m, m))
        faces = _mesh_points(self._process_mesh(crop), float(n), float(n), offset=(float(x0), float(y0)))
        if not faces:
            return None
        overlaps = [_iou(_box_of(f), box) for f in faces]
        best = int(np.argmax(overlaps))
        return faces[best] if overlaps[best] > 0.1 else None

    def _track_static(self, image: np.ndarray) -> TrackResult:
        height, width = image.shape[:2]
        small = fit_long_side(image, self.config.max_side)
        detections = self._detect(small, width, height)  # all of them: selection must see every face
        boxes = [box for box, _ in detections]
        for index in _selection_order(boxes, self.config.select, (height, width)):
            points = self._mesh_in_crop(image, boxes[index])
            if points is not None:
                face = FaceObservation(landmarks=points, bbox=_box_of(points), score=detections[index][1])
                return TrackResult(
                    found=True,
                    face=face,
                    image_size=(height, width),
                    num_faces=len(boxes),
                    boxes=tuple(boxes),
                )
        # fallback: the mesh graph's short-range detector on the whole image (large, close faces)
        faces = _mesh_points(self._process_mesh(small), float(width), float(height))
        if faces:
            mesh_boxes = [_box_of(f) for f in faces]
            index = _selection_order(mesh_boxes, self.config.select, (height, width))[0]
            score = max((s for b, s in detections if _iou(b, mesh_boxes[index]) > 0.3), default=1.0)
            face = FaceObservation(landmarks=faces[index], bbox=mesh_boxes[index], score=score)
            return TrackResult(
                found=True,
                face=face,
                image_size=(height, width),
                num_faces=max(len(faces), len(boxes)),
                boxes=tuple(mesh_boxes),
            )
        message = (
            f"{len(boxes)} face(s) detected but none could be meshed"
            if boxes
            else "no face found in the image"
        )
        return TrackResult(
            found=False, face=None, image_size=(height, width), num_faces=len(boxes), message=message
        )


def track_image(rgb: Any, config: TrackerConfig | None = None) -> TrackResult:
    """Track one still image (static mode); builds and closes a tracker, ~0.2 s overhead."""
    cfg = replace(config or TrackerConfig(), static_image=True)
    with FaceTracker(cfg) as tracker:
        return tracker.track(rgb, name="image")
