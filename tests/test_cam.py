"""``rt-portrait cam`` end to end: a registry talking clip is the camera, the avatar goes to a
file or to a recording stand-in for pyvirtualcam (no kernel module needed), and the error
paths end with a message that names the fix."""

from __future__ import annotations

import errno
import itertools
import os
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rt_portrait.cam import (
    CamConfig,
    CamError,
    CamReport,
    FileCamera,
    LiveCamera,
    StatusLine,
    TerminalKeys,
    camera_error,
    run_cam,
)
from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.core.video import count_frames, probe, read_frames
from rt_portrait.pipeline import Animator, AnimatorConfig

SIZE = 256  # working size and output long side (the astronaut is square: 256 x 256 out)
CLIP = "single_face.mp4"  # 2.4 s, 30 fps, with audio: the whole clip is the camera
LONG_CLIP = "WolfgangLanger_Pexels.mp4"  # 20 s, 24 fps: cut by max_frames or a quit key


def gray(image: np.ndarray, side: int = 64) -> np.ndarray:
    v = np.asarray(Image.fromarray(image).convert("L").resize((side, side), Image.BILINEAR), np.float64)
    return v.ravel() - v.mean()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    x, y = gray(a), gray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


def square(image: np.ndarray, side: int = SIZE) -> np.ndarray:
    h, w = image.shape[:2]
    s = min(h, w)
    y0, x0 = (h - s) // 2, (w - s) // 2
    return np.asarray(Image.fromarray(image[y0 : y0 + s, x0 : x0 + s]).resize((side, side), Image.BILINEAR))


@pytest.fixture(scope="module")
def source() -> np.ndarray:
    return default_portrait("astronaut")


@pytest.fixture(scope="module")
def source_out(source: np.ndarray) -> np.ndarray:
    """The source as the output shows it at rest (downscaled to the output size)."""
    return Animator(source, AnimatorConfig(size=SIZE, max_output_side=SIZE)).source


@pytest.fixture(scope="module")
def warp_box(source: np.ndarray) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1): the only part of the output frame the animation may change."""
    animator = Animator(source, AnimatorConfig(size=SIZE, max_output_side=SIZE))
    return animator.scene(SIZE).frame_warp.box


def config(source: np.ndarray | Path, camera: Path, output: str, **kw: object) -> CamConfig:
    return CamConfig(
        source=source,
        camera=str(camera),
        output=output,
        animator=AnimatorConfig(size=SIZE),
        status=False,
        hotkeys=False,
        **kw,  # type: ignore[arg-type]
    )


def assert_source_identity(
    frames: list[np.ndarray],
    drivers: list[np.ndarray],
    source_out: np.ndarray,
    box: tuple[int, int, int, int],
    max_outside_mae: float,
) -> None:
    """Outside the animated box the output is the source's own pixels; inside, the face is
    the source's (closer to the source portrait than to the driver frame it was made from)."""
    y0, y1, x0, x1 = box
    outside = np.ones(source_out.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    assert outside.sum() > 0.1 * outside.size, "the test needs pixels outside the animated box"
    for frame, driver in zip(frames, drivers, strict=True):
        frame = frame[: source_out.shape[0], : source_out.shape[1]]
        diff = np.abs(frame.astype(np.float64) - source_out.astype(np.float64))
        assert diff[outside].mean() < max_outside_mae, f"outside the face: MAE {diff[outside].mean():.1f}"
        inner_out, inner_src = frame[y0:y1, x0:x1], source_out[y0:y1, x0:x1]
        to_source = corr(inner_out, inner_src)
        to_driver = corr(inner_out, square(driver, inner_out.shape[1])[: inner_out.shape[0]])
        assert to_source > 0.8, f"the face region does not look like the source (corr {to_source:.2f})"
        assert to_source > to_driver + 0.3, (to_source, to_driver)


# ---------------------------------------------------------------------------------------
# (a) a video file as the camera, the avatar recorded to FILE.mp4
# ---------------------------------------------------------------------------------------
@dataclass
class FileRun:
    report: CamReport
    path: Path
    clip: Path


@pytest.fixture(scope="module")
def file_run(source: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> FileRun:
    clip = pyfeat_file(CLIP)
    out = tmp_path_factory.mktemp("cam") / "avatar.mp4"
    report = run_cam(config(source, clip, str(out)))
    return FileRun(report, out, clip)


def test_file_output_has_every_camera_frame_at_the_clip_rate(file_run: FileRun) -> None:
    n_clip = count_frames(file_run.clip)
    assert file_run.report.stopped == "end"
    assert file_run.report.frames_in == n_clip and file_run.report.dropped == 0
    assert count_frames(file_run.path) == n_clip
    info, clip_info = probe(file_run.path), probe(file_run.clip)
    assert (info.width, info.height) == (SIZE, SIZE) == (file_run.report.width, file_run.report.height)
    assert info.fps == clip_info.fps
    assert info.has_audio, "the camera file's audio was not kept"
    assert file_run.report.face_frames == n_clip  # a talking head throughout


def test_file_output_shows_the_source_identity(
    file_run: FileRun, source_out: np.ndarray, warp_box: tuple[int, int, int, int]
) -> None:
    frames = list(read_frames(file_run.path, every=12))
    drivers = list(read_frames(file_run.clip, every=12))
    assert len(frames) == len(drivers) >= 5
    assert_source_identity(frames, drivers, source_out, warp_box, max_outside_mae=4.0)


def test_live_recording_keeps_wall_clock_time(source: np.ndarray, tmp_path: Path) -> None:
    """A camera played in real time and recorded: a frame that took several output ticks to
    make is repeated for them, so the file lasts as long as the run and plays at --fps."""
    out = tmp_path / "live.mp4"
    report = run_cam(config(source, pyfeat_file(LONG_CLIP), str(out), realtime=True, max_frames=12, fps=24.0))
    assert report.frames_in == 12 and report.frames_out >= report.frames_in
    assert count_frames(out) == report.frames_out
    assert probe(out).fps == 24


def test_file_output_is_atomic_on_failure(source: np.ndarray, tmp_path: Path) -> None:
    """A run that fails (here: no frame at all) leaves no file behind."""
    out = tmp_path / "never.mp4"
    with pytest.raises(CamError, match="no frames"):
        run_cam(config(source, pyfeat_file(CLIP), str(out), max_frames=0))
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------
# (b) a recording stand-in for pyvirtualcam
# ---------------------------------------------------------------------------------------
@dataclass
class RecordingCamera:
    width: int
    height: int
    fps: float
    device: str = "/dev/video-test"
    frames: list[np.ndarray] = field(default_factory=list)
    closed: bool = False

    def send(self, frame: np.ndarray) -> None:
        assert not self.closed
        assert frame.shape == (self.height, self.width, 3) and frame.dtype == np.uint8
        self.frames.append(frame.copy())

    def close(self) -> None:
        self.closed = True


class Recorder:
    def __init__(self) -> None:
        self.cameras: list[RecordingCamera] = []

    def __call__(self, width: int, height: int, fps: float, device: str | None) -> RecordingCamera:
        cam = RecordingCamera(width, height, fps, device or "/dev/video-test")
        self.cameras.append(cam)
        return cam


def test_virtual_camera_gets_every_frame_of_the_source(
    source: np.ndarray, source_out: np.ndarray, warp_box: tuple[int, int, int, int]
) -> None:
    clip = pyfeat_file(LONG_CLIP)
    recorder = Recorder()
    n = 36
    report = run_cam(
        config(source, clip, "virtual", max_frames=n, realtime=False, fps=24.0), virtual_camera=recorder
    )
    (cam,) = recorder.cameras
    assert cam.closed
    assert (cam.width, cam.height, cam.fps) == (SIZE, SIZE, 24.0)
    assert len(cam.frames) == n == report.frames_in == report.frames_out
    assert report.stopped == "max_frames" and report.output == "/dev/video-test"
    # exact pixels here (no encoder): outside the animated box the output is the source itself
    drivers = list(read_frames(clip, max_frames=n))
    assert_source_identity(cam.frames[::6], drivers[::6], source_out, warp_box, max_outside_mae=0.5)
    assert len({f.tobytes() for f in cam.frames}) > n // 2, "the avatar does not move"


def test_hotkeys_toggle_the_generator_and_quit(source: np.ndarray) -> None:
    clip = pyfeat_file(LONG_CLIP)
    recorder = Recorder()
    presses = {5: "g", 8: "r", 12: "q"}
    calls = iter(range(10_000))
    report = run_cam(
        config(source, clip, "virtual", realtime=False),
        virtual_camera=recorder,
        keys=lambda: presses.get(next(calls), ""),
    )
    assert report.stopped == "quit"
    assert report.frames_in == 12 and len(recorder.cameras[0].frames) == 12
    assert report.generator_on is False


def test_file_camera_in_real_time_drops_stale_frames() -> None:
    """Played like a live camera, a slow consumer gets the newest frame, never a backlog."""
    cam = FileCamera(pyfeat_file(LONG_CLIP), realtime=True)  # 24 fps
    try:
        times = []
        for _ in range(5):
            item = cam.read()
            assert item is not None
            times.append(item[1])
            time.sleep(0.2)  # ~5 frame periods of work
        assert cam.dropped >= 8
        assert all(b - a > 0.1 for a, b in itertools.pairwise(times)), times
    finally:
        cam.close()


def test_live_camera_keeps_only_the_newest_frame() -> None:
    """The webcam reader, fed by a decoder that outruns the consumer (a clip opened in place of
    the device): each read is the newest frame, the rest are counted as dropped, none queue."""
    import av

    clip = pyfeat_file(LONG_CLIP)
    n_clip = count_frames(clip)
    opened: list[dict] = []

    def opener(url: str, **kw: object) -> object:
        opened.append({"url": url, **kw})
        return av.open(str(clip))

    cam = LiveCamera("/dev/video-test", fps=30.0, opener=opener)
    try:
        assert opened[0] == {"url": "/dev/video-test", "format": "v4l2", "options": {"framerate": "30"}}
        times, reads = [], 0
        with pytest.raises(CamError, match="stopped sending frames"):
            for _ in range(n_clip + 1):  # bounded: the clip ends, and then the camera "stops"
                item = cam.read()
                assert item is not None and item[0].shape == (360, 640, 3)
                times.append(item[1])
                reads += 1
                time.sleep(0.05)  # a slow pipeline
        assert reads + cam.dropped == n_clip  # every decoded frame was either taken or dropped
        assert cam.dropped > 0 and reads < n_clip, (reads, cam.dropped)
        assert all(b > a for a, b in itertools.pairwise(times))
    finally:
        cam.close()


def test_live_camera_busy_at_open_names_the_fix() -> None:
    def busy(url: str, **kw: object) -> object:
        raise OSError(errno.EBUSY, "Device or resource busy")

    with pytest.raises(CamError, match=r"camera /dev/video-test is busy: .*close that program"):
        LiveCamera("/dev/video-test", fps=30.0, opener=busy)


# ---------------------------------------------------------------------------------------
# Errors name the fix
# ---------------------------------------------------------------------------------------
def test_missing_camera_file(source: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(CamError, match=r"camera file .*nope\.mp4 not found"):
        run_cam(config(source, tmp_path / "nope.mp4", str(tmp_path / "out.mp4")))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="v4l2 device paths")
def test_missing_webcam(source: np.ndarray, tmp_path: Path) -> None:
    device = "/dev/video63"
    if os.path.exists(device):
        pytest.skip(f"{device} exists here")
    with pytest.raises(CamError, match=r"no camera at /dev/video63: .*--camera"):
        run_cam(config(source, Path(device), str(tmp_path / "out.mp4")))


def test_sizes_too_small_for_a_face(source: np.ndarray, tmp_path: Path) -> None:
    with pytest.raises(CamError, match="--size must be at least 64"):
        run_cam(
            CamConfig(
                source, str(pyfeat_file(CLIP)), str(tmp_path / "o.mp4"), animator=AnimatorConfig(size=8)
            )
        )
    with pytest.raises(CamError, match="--output-size must be at least 64"):
        run_cam(CamConfig(source, str(pyfeat_file(CLIP)), str(tmp_path / "o.mp4"), output_size=16))


def test_busy_and_forbidden_webcams_name_the_fix() -> None:
    busy = camera_error("/dev/video0", OSError(errno.EBUSY, "Device or resource busy"))
    assert "busy" in str(busy) and "close that program" in str(busy)
    denied = camera_error("/dev/video0", PermissionError(errno.EACCES, "Permission denied"))
    assert "video' group" in str(denied)


def test_faceless_source(tmp_path: Path) -> None:
    with pytest.raises(CamError, match="no face in the source portrait"):
        run_cam(
            config(
                pyfeat_file("free-mountain-vector-01.jpg"),
                pyfeat_file(CLIP),
                str(tmp_path / "out.mp4"),
            )
        )
    assert not (tmp_path / "out.mp4").exists()


def test_missing_pyvirtualcam_names_the_extra(source: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyvirtualcam", None)  # import fails as if not installed
    with pytest.raises(CamError, match=r"pip install 'rt-portrait\[cam\]'"):
        run_cam(config(source, pyfeat_file(CLIP), "virtual"))


def test_no_virtual_camera_device_names_the_fix(source: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_device(**kw: object) -> None:  # what pyvirtualcam raises without v4l2loopback
        raise RuntimeError("'v4l2loopback' backend: No v4l2 loopback device found at /dev/video[0-99].")

    monkeypatch.setitem(sys.modules, "pyvirtualcam", types.SimpleNamespace(Camera=no_device))
    monkeypatch.setattr(sys, "platform", "linux")
    with pytest.raises(CamError, match=r"no virtual camera device .*sudo modprobe v4l2loopback devices=1"):
        run_cam(config(source, pyfeat_file(CLIP), "virtual", realtime=False))
    monkeypatch.setattr(sys, "platform", "darwin")
    with pytest.raises(CamError, match=r"no virtual camera device .*OBS"):
        run_cam(config(source, pyfeat_file(CLIP), "virtual", realtime=False))


def test_real_pyvirtualcam_without_a_device(source: np.ndarray) -> None:
    pytest.importorskip("pyvirtualcam")
    if not sys.platform.startswith("linux") or any(Path("/sys/devices/virtual/video4linux").glob("video*")):
        pytest.skip("needs Linux without a v4l2loopback device")
    with pytest.raises(CamError, match="modprobe v4l2loopback"):
        run_cam(config(source, pyfeat_file(CLIP), "virtual", realtime=False))


def test_cli_errors_are_one_line_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from rt_portrait.cli import main

    portrait = tmp_path / "portrait.png"
    Image.fromarray(default_portrait("grace_hopper")).save(portrait)
    code = main(["cam", "--source", str(portrait), "--camera", str(tmp_path / "missing.mp4"), "-o", "x.mp4"])
    err = capsys.readouterr().err
    assert code == 1
    assert err.count("\n") == 1 and err.startswith("rt-portrait cam: error: camera file"), err
    assert "Traceback" not in err


def test_cli_warns_when_no_camera_frame_has_a_face(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from rt_portrait.cli import main

    portrait = tmp_path / "portrait.png"
    Image.fromarray(default_portrait("astronaut")).save(portrait)
    out = tmp_path / "held.mp4"
    argv = ["cam", "--source", str(portrait), "--camera", str(pyfeat_file("no_face.mp4")), "-o", str(out)]
    code = main([*argv, "--max-frames", "10", "--quiet"])
    captured = capsys.readouterr()
    assert code == 0 and captured.out.strip() == str(out)
    assert "warning: no face in any camera frame" in captured.err
    assert count_frames(out) == 10


# ---------------------------------------------------------------------------------------
# Terminal: no TTY -> no hotkeys; a real TTY -> the status line in place and q quits
# ---------------------------------------------------------------------------------------
def test_no_tty_means_no_hotkeys_and_plain_status(tmp_path: Path) -> None:
    r, w = os.pipe()
    try:
        with open(r, closefd=False) as stream, TerminalKeys(stream) as keys:
            os.write(w, b"q")
            assert not keys.enabled and keys.read() == ""
    finally:
        os.close(r)
        os.close(w)
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        status = StatusLine(f, plain_interval_s=5.0)
        status.update("one", 0.0)
        status.update("two", 1.0)  # too soon for a log: skipped
        status.update("three", 6.0)
        status.close()
    assert log.read_text() == "one\nthree\n"


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs pty.fork")
@pytest.mark.parametrize("stop", ["q", "SIGTERM"])
def test_cli_on_a_terminal_shows_status_and_stops_cleanly(tmp_path: Path, stop: str) -> None:
    """The real command on a pseudo-terminal: the status line is rewritten in place, and
    pressing q (or a SIGTERM) ends the run early with the recording finished and kept."""
    import pty
    import select
    import signal

    portrait = tmp_path / "portrait.png"
    Image.fromarray(default_portrait("astronaut")).save(portrait)
    clip = pyfeat_file(LONG_CLIP)  # 480 frames: far more than the run lasts
    out = tmp_path / "avatar.mp4"
    argv = [sys.executable, "-m", "rt_portrait.cli", "cam", "--source", str(portrait)]
    argv += ["--camera", str(clip), "-o", str(out), "--size", str(SIZE)]
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is its controlling terminal, stdin, stdout and stderr
        os.environ["OMP_NUM_THREADS"] = "1"
        os.execv(sys.executable, argv)
    text, sent, deadline = b"", False, time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            ready = select.select([fd], [], [], 0.5)[0]
            if ready:
                try:
                    chunk = os.read(fd, 4096)
                except OSError:  # the child closed the terminal: it has exited
                    break
                if not chunk:
                    break
                text += chunk
            if not sent and text.count(b" fps |") >= 3:
                if stop == "q":
                    os.write(fd, b"q")
                else:
                    os.kill(pid, signal.SIGTERM)
                sent = True
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(fd)
    shown = text.decode(errors="replace")
    assert sent, f"no live status line appeared: {shown[-2000:]}"
    assert os.waitstatus_to_exitcode(status) == 0, shown[-2000:]
    assert "\r\x1b[K" in shown  # rewritten in place
    stopped = "quit" if stop == "q" else "terminated"
    assert "face yes" in shown and f"stopped: {stopped}" in shown, shown[-2000:]
    n = count_frames(out)
    assert 0 < n < count_frames(clip)
    assert not list(tmp_path.glob(".*part*")), "a partial file was left behind"
