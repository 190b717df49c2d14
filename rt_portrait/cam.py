"""``rt-portrait cam``: the avatar as a camera for any call app, or recorded to a file.

Driver frames come from a webcam (or a video file standing in for one), go through the same
``Animator`` / ``AnimatorSession`` as the live server, and leave through a virtual camera
(``pyvirtualcam``: v4l2loopback on Linux, OBS Virtual Camera on Windows and macOS) or into
an H.264 file written atomically by :mod:`rt_portrait.core.video` (with the driver's audio
when the camera is a file).

Why PyAV and not OpenCV for the webcam: PyAV is already a dependency (file I/O and the
server's WebRTC stack use it); it opens v4l2 (Linux), AVFoundation (macOS) and DirectShow
(Windows) devices through FFmpeg, and when a device cannot be opened it reports the errno
(missing, busy, no permission) that the errors here turn into a fix. OpenCV would add a
second media stack for the same frames.

Frame policy. A live camera is read by a thread that keeps only the newest frame (a slot,
not a queue); the loop takes whatever is newest when it is free and paces its output to
``fps``, so a slow frame drops stale input instead of building lag. A video file as the
camera is read frame by frame (every frame, in order, its own timestamps) unless
``realtime`` makes it play like a live camera; the run ends at the file's end.

While it runs: a one-line status on stderr (refreshed in place on a terminal) and, when
stdin is a terminal, hotkeys: ``r`` recalibrates the neutral pose, ``g`` toggles the
generator (off: the learning-free warp fill, or the raw 3D-flow warp when the warp fill is
the generator), ``q`` quits (so does Ctrl-C).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from fractions import Fraction
from pathlib import Path
from typing import IO, Any, Protocol

import av
import numpy as np
import torch

from rt_portrait.core.image import ImageError, load_image
from rt_portrait.core.signals import raise_on_sigterm
from rt_portrait.core.video import MediaError, probe, write_video
from rt_portrait.generator import Generator, GeneratorInput, GeneratorOutput, WarpFillGenerator
from rt_portrait.generator.select import generator_kind
from rt_portrait.pipeline import Animator, AnimatorConfig, NoFaceError

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v")
MIN_SIDE = 64  # smallest working or output side at which a face is still tracked and drawn
V4L2LOOPBACK_FIX = (
    "load v4l2loopback: sudo modprobe v4l2loopback devices=1 exclusive_caps=1 card_label=rt-portrait "
    "(package v4l2loopback-dkms on Debian/Ubuntu)"
)
OBS_FIX = (
    "install OBS Studio (OBS 30 or later on macOS 13 and later), start its virtual camera once "
    "(Start Virtual Camera, then Stop Virtual Camera) and close OBS: its one virtual camera is then free "
    "for rt-portrait"
)


class CamError(RuntimeError):
    """A problem the user can fix (device, file, portrait); the message names the fix."""


# ---------------------------------------------------------------------------------------
# Configuration and report
# ---------------------------------------------------------------------------------------
@dataclass
class CamConfig:
    source: str | Path | np.ndarray  # the portrait: an image file, or (H, W, 3) uint8 RGB
    camera: str = "0"  # webcam index, device (/dev/videoN, "video=Name" on Windows) or video file
    output: str = "virtual"  # "virtual" (a virtual camera) or a .mp4/.mov/.m4v file
    fps: float = 30.0  # pace of the output (a video-file camera written to a file keeps its own)
    animator: AnimatorConfig = field(default_factory=AnimatorConfig)  # size, edits, strengths
    output_size: int | None = None  # long side of the output frames; None = the working size
    generator: Generator | None = None  # None = the pipeline's default generator
    virtual_device: str | None = None  # e.g. /dev/video10; None = pyvirtualcam picks
    realtime: bool | None = None  # None: live cameras and virtual output pace in real time
    max_frames: int | None = None  # stop after this many camera frames
    status: bool = True  # the live status line on stderr
    hotkeys: bool = True  # read r / g / q from the terminal (only when stdin is a TTY)


@dataclass
class CamReport:
    output: str  # the file written, or the virtual camera's device
    width: int
    height: int
    frames_in: int  # camera frames animated
    frames_out: int  # frames sent or written (a live recording repeats frames to keep time)
    dropped: int  # camera frames never animated (stale: a newer one was there)
    face_frames: int  # animated frames in which the driver's face was found
    seconds: float
    stopped: str  # "end" (of the camera file), "quit", "interrupt", "terminated" or "max_frames"
    stage_ms: dict[str, float]  # median milliseconds per stage
    generator_on: bool = True

    @property
    def fps(self) -> float:
        return self.frames_in / self.seconds if self.seconds > 0 else 0.0


# ---------------------------------------------------------------------------------------
# Cameras (input)
# ---------------------------------------------------------------------------------------
class FrameSource(Protocol):
    label: str
    fps: float
    dropped: int

    def read(self) -> tuple[np.ndarray, float] | None:
        """The next (newest) frame as RGB uint8 and its time in seconds; None at the end."""
        ...

    def close(self) -> None: ...


def is_device(camera: str) -> bool:
    return camera.isdigit() or camera.startswith(("/dev/", "video="))


def _device_open_args(camera: str) -> tuple[str, str]:
    """(url, FFmpeg input format) of a webcam on this platform."""
    if sys.platform.startswith("linux"):
        return (f"/dev/video{camera}" if camera.isdigit() else camera), "v4l2"
    if sys.platform == "darwin":
        return camera, "avfoundation"
    if sys.platform.startswith("win"):
        if camera.isdigit():
            raise CamError(
                f"--camera {camera}: on Windows name the camera, e.g. --camera 'video=Integrated Camera' "
                "(list them with: ffmpeg -list_devices true -f dshow -i dummy)"
            )
        return camera, "dshow"
    raise CamError(f"--camera {camera}: webcams are supported on Linux, macOS and Windows only")


def camera_error(camera: str, exc: BaseException) -> CamError:
    """A webcam that cannot be opened, with the fix for its errno."""
    code = getattr(exc, "errno", None)
    if code == errno.ENOENT or isinstance(exc, FileNotFoundError):
        return CamError(
            f"no camera at {camera}: plug one in, or pick another with --camera N or --camera /dev/videoN "
            "(list them with: v4l2-ctl --list-devices); a video file works too: --camera clip.mp4"
        )
    if code == errno.EBUSY:
        return CamError(
            f"camera {camera} is busy: another program (a call app, a browser tab, OBS) holds it; "
            "close that program or pick another --camera"
        )
    if code == errno.EACCES or isinstance(exc, PermissionError):
        return CamError(
            f"no permission to open camera {camera}: add yourself to the 'video' group "
            "(sudo usermod -aG video $USER, then log in again)"
        )
    return CamError(f"cannot open camera {camera}: {exc}")


class LiveCamera:
    """A webcam read by a thread that keeps only the newest frame (newest wins, no queue)."""

    def __init__(
        self,
        camera: str,
        fps: float,
        open_timeout_s: float = 10.0,
        opener: Callable[..., Any] = av.open,  # av.open's signature; tests pass a file opener
    ) -> None:
        url, fmt = _device_open_args(camera)
        self.label = url
        self.fps = fps
        self.dropped = 0
        self._timeout = open_timeout_s
        self._container: Any = None
        try:
            with contextlib.suppress(av.FFmpegError):  # not every camera offers every rate
                self._container = opener(url, format=fmt, options={"framerate": f"{fps:g}"})
            if self._container is None:
                self._container = opener(url, format=fmt)
        except (av.FFmpegError, OSError) as exc:
            raise camera_error(url, exc) from None
        if not self._container.streams.video:
            self._container.close()
            raise CamError(f"{url} has no video stream: pick a camera with --camera /dev/videoN")
        self._cond = threading.Condition()
        self._newest: tuple[Any, float] | None = None  # (av.VideoFrame, seconds since the first)
        self._error: BaseException | None = None
        self._ended = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rt-portrait-camera", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        t0: float | None = None
        try:
            for frame in self._container.decode(video=0):
                if self._stop.is_set():
                    break
                now = time.monotonic()
                t0 = now if t0 is None else t0
                with self._cond:
                    if self._newest is not None:
                        self.dropped += 1  # never taken: a newer frame replaces it
                    self._newest = (frame, now - t0)  # converted to RGB only if taken
                    self._cond.notify_all()
        except BaseException as exc:  # reported to the loop, which raises it as a CamError
            self._error = exc
        finally:
            with self._cond:
                self._ended = True
                self._cond.notify_all()

    def read(self) -> tuple[np.ndarray, float] | None:
        with self._cond:
            ready = self._cond.wait_for(lambda: self._newest is not None or self._ended, self._timeout)
            if self._newest is not None:
                (frame, t), self._newest = self._newest, None
                return frame.to_ndarray(format="rgb24"), t
            if self._error is not None and not self._stop.is_set():
                raise CamError(f"camera {self.label} stopped: {self._error}")
            if not ready:
                raise CamError(
                    f"camera {self.label} sent no frame in {self._timeout:.0f} s: is another program "
                    "using it, or is it a virtual camera with nothing feeding it?"
                )
            raise CamError(f"camera {self.label} stopped sending frames (unplugged?)")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2.0)  # the reader sees the flag at its next frame
        if not self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._container.close()
        # else: a camera that sends nothing keeps its (daemon) reader blocked; closing the
        # container under a decoding thread is not safe in FFmpeg, so it is left to the exit


class FileCamera:
    """A video file as the camera. Every frame in order at its own timestamps, or with
    ``realtime`` like a live camera: frames fall due on the wall clock and stale ones drop."""

    def __init__(self, path: str | os.PathLike, realtime: bool = False) -> None:
        path = Path(path)
        if not path.exists():
            raise CamError(f"camera file {path} not found: give an existing video or a webcam (--camera 0)")
        try:
            info = probe(path, decode_first=True)
        except MediaError as exc:
            raise CamError(f"camera file {exc}") from None
        self.label = str(path)
        self.path = path
        self.fps = float(info.fps)
        self.has_audio = info.has_audio
        self.realtime = realtime
        self.dropped = 0
        self._container: Any = av.open(str(path))
        self._frames = self._decode()
        self._pending: tuple[Any, float] | None = None
        self._t0: float | None = None

    def _decode(self) -> Iterator[tuple[Any, float]]:
        """(av.VideoFrame, seconds): converted to RGB only when handed out."""
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        last = -1.0
        for i, frame in enumerate(self._container.decode(stream)):
            t = frame.time if frame.time is not None else i / self.fps
            t = max(float(t), last + 1e-3)  # strictly increasing for the smoothing filters
            last = t
            yield frame, t

    def _next(self) -> tuple[Any, float] | None:
        if self._pending is not None:
            out, self._pending = self._pending, None
            return out
        try:
            return next(self._frames, None)
        except av.FFmpegError as exc:
            raise CamError(f"camera file {self.label}: decoding failed ({exc})") from None

    def read(self) -> tuple[np.ndarray, float] | None:
        item = self._next()
        if item is None:
            return None
        if self.realtime:
            item = self._newest_due(item)
        return item[0].to_ndarray(format="rgb24"), item[1]

    def _newest_due(self, item: tuple[Any, float]) -> tuple[Any, float]:
        now = time.monotonic()
        if self._t0 is None:
            self._t0 = now - item[1]
        # skip frames whose successor is already due (a live camera would have replaced them)
        while True:
            nxt = self._next()
            if nxt is None:
                break
            if self._t0 + nxt[1] > now:
                self._pending = nxt
                break
            item = nxt
            self.dropped += 1
        wait = self._t0 + item[1] - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        return item

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._container.close()


# ---------------------------------------------------------------------------------------
# Virtual camera (output)
# ---------------------------------------------------------------------------------------
class VirtualCamera(Protocol):
    device: str

    def send(self, frame: np.ndarray) -> None: ...

    def close(self) -> None: ...


VirtualCameraFactory = Callable[[int, int, float, str | None], VirtualCamera]


def _import_pyvirtualcam() -> Any:
    try:
        import pyvirtualcam
    except ImportError:
        raise CamError(
            "the virtual camera needs pyvirtualcam: pip install 'rt-portrait[cam]' "
            "(or record to a file instead: --output avatar.mp4)"
        ) from None
    return pyvirtualcam


def pyvirtualcam_camera(width: int, height: int, fps: float, device: str | None) -> VirtualCamera:
    """A ``pyvirtualcam.Camera`` (RGB); imported here so the rest runs without it."""
    pyvirtualcam = _import_pyvirtualcam()
    try:
        return pyvirtualcam.Camera(width=width, height=height, fps=fps, device=device)
    except (RuntimeError, ValueError, OSError) as exc:
        raise no_virtual_camera(str(exc)) from None


def no_virtual_camera(detail: str) -> CamError:
    if sys.platform.startswith("linux"):
        fix = V4L2LOOPBACK_FIX
    elif sys.platform in ("win32", "darwin"):
        fix = OBS_FIX
    else:
        fix = "virtual cameras are supported on Linux (v4l2loopback), Windows and macOS (OBS)"
    return CamError(
        f"no virtual camera device ({detail.rstrip('.')}): {fix}; or record to a file: --output avatar.mp4"
    )


# ---------------------------------------------------------------------------------------
# Terminal: hotkeys and status line
# ---------------------------------------------------------------------------------------
class TerminalKeys:
    """Key presses from a terminal, read without blocking. Inert unless ``stream`` is a TTY
    in the foreground (piped, closed or backgrounded stdin -> no hotkeys, no error)."""

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = sys.stdin if stream is None else stream
        self._fd = -1
        self._saved: Any = None
        self.enabled = False

    def __enter__(self) -> TerminalKeys:
        try:
            fd = self._stream.fileno()
            if not os.isatty(fd):
                return self
        except (AttributeError, OSError, ValueError):
            return self
        if sys.platform.startswith("win"):
            self._fd, self.enabled = fd, True
            return self
        import termios
        import tty

        try:
            if os.tcgetpgrp(fd) != os.getpgrp():
                return self  # a background job: touching the terminal would stop the process
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)  # keys arrive one by one, unechoed; Ctrl-C still interrupts
        except (OSError, termios.error):
            return self
        self._fd, self.enabled = fd, True
        return self

    def read(self) -> str:
        """The keys pressed since the last call ("" when none)."""
        if not self.enabled:
            return ""
        if sys.platform.startswith("win"):
            import msvcrt

            keys = ""
            while msvcrt.kbhit():  # type: ignore[attr-defined]
                keys += msvcrt.getwch()  # type: ignore[attr-defined]
            return keys
        import select

        keys = b""
        with contextlib.suppress(OSError):
            while select.select([self._fd], [], [], 0)[0]:
                chunk = os.read(self._fd, 64)
                if not chunk:
                    break
                keys += chunk
        return keys.decode("utf-8", "replace")

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            import termios

            with contextlib.suppress(OSError, termios.error):
                termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None
        self.enabled = False


class StatusLine:
    """One status line on ``stream``: rewritten in place on a terminal (a few times a second),
    a plain line every ``plain_interval_s`` otherwise (logs)."""

    def __init__(
        self, stream: IO[str] | None = None, interval_s: float = 0.25, plain_interval_s: float = 5.0
    ):
        self.stream = sys.stderr if stream is None else stream
        try:
            self.tty = self.stream.isatty()
        except (AttributeError, ValueError):
            self.tty = False
        self._interval = interval_s if self.tty else plain_interval_s
        self._last = -1e9
        self._shown = False

    def update(self, text: str, now: float, force: bool = False) -> None:
        if not force and now - self._last < self._interval:
            return
        self._last = now
        with contextlib.suppress(OSError, ValueError):
            if self.tty:
                self.stream.write("\r\x1b[K" + text)
                self._shown = True
            else:
                self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._shown:
            with contextlib.suppress(OSError, ValueError):
                self.stream.write("\n")
                self.stream.flush()
            self._shown = False


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------
class RawWarp:
    """No generator: the full-resolution 3D-flow warp shows everywhere (holes unfilled)."""

    def __call__(self, inputs: GeneratorInput) -> GeneratorOutput:
        return GeneratorOutput(inputs.warped, torch.zeros_like(inputs.warped[:1]))


def _pad_even(frame: np.ndarray) -> np.ndarray:
    """Even sides (4:2:0 video and v4l2loopback need them), by repeating the last row/column."""
    h, w = frame.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return frame
    return np.pad(frame, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def _load_source(source: str | Path | np.ndarray) -> tuple[np.ndarray, str]:
    if isinstance(source, np.ndarray):
        return source, "source"
    try:
        return load_image(source), Path(source).name
    except ImageError as exc:
        raise CamError(f"--source {exc}") from None


def _ms(stats: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(float(np.median(v)), 2) for k, v in stats.items() if v}


class _Loop:
    """Camera -> session -> output frames, with pacing, hotkeys and status."""

    STAGES = ("read", "track", "fit", "flow", "warp", "out")

    def __init__(
        self,
        config: CamConfig,
        animator: Animator,
        camera: FrameSource,
        realtime: bool,
        keys: Callable[[], str],
        status: StatusLine | None,
    ) -> None:
        self.config = config
        self.animator = animator
        self.camera = camera
        self.realtime = realtime
        self.keys = keys
        self.status = status
        self.session = animator.session(fps=camera.fps)
        self.generator = animator.generator
        # off: the learning-free warp fill when a learned generator is on, else the raw warp
        self.fallback: Generator = (
            RawWarp()
            if isinstance(self.generator, WarpFillGenerator)
            else WarpFillGenerator(mouth_style=animator.config.mouth)
        )
        self.generator_on = True
        self.frames_in = 0
        self.frames_out = 0
        self.face_frames = 0
        self.face = False
        self.stopped = "end"
        self.samples: dict[str, list[float]] = {k: [] for k in (*self.STAGES, "total")}
        self.ema: dict[str, float] = {}
        self._stamps: list[float] = []
        self._t_first: float | None = None  # when the first camera frame arrived

    def _note(self, key: str, ms: float) -> None:
        samples = self.samples.setdefault(key, [])
        if len(samples) < 100_000:
            samples.append(ms)
        prev = self.ema.get(key)
        self.ema[key] = ms if prev is None else prev + 0.2 * (ms - prev)

    def _handle_keys(self) -> bool:
        """Apply pressed hotkeys; False when asked to quit."""
        for key in self.keys().lower():
            if key == "q":
                self.stopped = "quit"
                return False
            if key == "r":
                self.session.recalibrate()
            elif key == "g":
                self.generator_on = not self.generator_on
                gen = self.generator if self.generator_on else self.fallback
                self.animator.generator = gen
                if hasattr(self.session, "generator"):  # a session that holds its own choice
                    self.session.generator = gen
        return True

    def generator_label(self) -> str:
        current = self.generator if self.generator_on else self.fallback
        kind = "raw warp" if isinstance(current, RawWarp) else generator_kind(current)
        return kind if self.generator_on else f"off ({kind})"

    def status_text(self, now: float) -> str:
        recent = [t for t in self._stamps if t >= now - 2.0]
        fps = (len(recent) - 1) / max(now - recent[0], 1e-6) if len(recent) >= 2 else 0.0
        order = ["track", "fit", "flow", "history", "generator", "warp", "out", "total"]
        keys = [k for k in order if k in self.ema] + sorted(set(self.ema) - set(order) - {"read"})
        stages = " ".join(f"{k} {self.ema[k]:.1f}" for k in keys)
        text = (
            f"cam {fps:5.1f} fps | ms {stages} | face {'yes' if self.face else 'NO '} | "
            f"generator {self.generator_label()} | dropped {self.camera.dropped}"
        )
        return text + (" | r recalibrate, g generator, q quit" if self.config.hotkeys else "")

    def frames(self) -> Iterator[np.ndarray]:
        """Output frames until the camera file ends, ``q``, Ctrl-C or ``max_frames``."""
        period = 1.0 / self.config.fps
        next_due = time.monotonic()
        try:
            while True:
                if not self._handle_keys():
                    return
                if self.config.max_frames is not None and self.frames_in >= self.config.max_frames:
                    self.stopped = "max_frames"
                    return
                if self.realtime:  # pace to fps: wait for the tick, then take the newest frame
                    now = time.monotonic()
                    if next_due > now:
                        time.sleep(next_due - now)
                    next_due = max(next_due + period, time.monotonic() - period)
                t0 = time.perf_counter()
                item = self.camera.read()
                if item is None:
                    self.stopped = "end"
                    return
                rgb, t = item
                t1 = time.perf_counter()
                if self._t_first is None:
                    self._t_first = time.monotonic()
                result = self.session(rgb, t)
                self.frames_in += 1
                self.face = result.face_found
                self.face_frames += int(result.face_found)
                image = _pad_even(result.image)
                self._note("read", (t1 - t0) * 1e3)
                for key, value in result.timings_ms.items():
                    self._note(key, float(value))
                # a live recording repeats a frame for the ticks it took, so the file keeps time
                repeats = 1
                if self.realtime and self.config.output != "virtual":
                    due = int((time.monotonic() - self._t_first) * self.config.fps) + 1
                    repeats = max(1, due - self.frames_out)
                t2 = time.perf_counter()
                for _ in range(repeats):
                    yield image
                    self.frames_out += 1
                self._note("out", (time.perf_counter() - t2) * 1e3)
                now = time.monotonic()
                self._stamps.append(now)
                del self._stamps[:-128]
                if self.status is not None:
                    self.status.update(self.status_text(now), now)
        except KeyboardInterrupt:
            self.stopped = "interrupt"  # ends the output cleanly: a recording is kept
        except Terminated:
            self.stopped = "terminated"


class Terminated(Exception):
    """SIGTERM arrived: the run stops like ``q`` (a recording is finished, devices released)."""


def _is_file_output(output: str) -> bool:
    return output != "virtual"


def run_cam(
    config: CamConfig,
    *,
    virtual_camera: VirtualCameraFactory | None = None,
    keys: Callable[[], str] | None = None,
    status_stream: IO[str] | None = None,
) -> CamReport:
    """Animate ``config.source`` with the camera until it ends or the user quits.

    ``virtual_camera`` opens the output camera (default: pyvirtualcam); ``keys`` returns the
    keys pressed since its last call (default: the terminal's, when stdin is a TTY)."""
    if config.fps <= 0:
        raise CamError(f"--fps must be positive, got {config.fps:g}")
    for flag, value in (("--size", config.animator.size), ("--output-size", config.output_size)):
        if value is not None and value < MIN_SIDE:
            raise CamError(f"{flag} must be at least {MIN_SIDE} px (a face needs room), got {value}")
    out_path: Path | None = None
    if _is_file_output(config.output):
        out_path = Path(config.output)
        if out_path.suffix.lower() not in VIDEO_SUFFIXES:
            raise CamError(
                f"--output {config.output}: give 'virtual' for the virtual camera, or a "
                f"{'/'.join(VIDEO_SUFFIXES)} file to record to"
            )
    if out_path is None and virtual_camera is None:
        _import_pyvirtualcam()  # before the slow work: name the missing extra at once
    camera_is_file = not is_device(config.camera)
    realtime = config.realtime if config.realtime is not None else (not camera_is_file or out_path is None)

    image, name = _load_source(config.source)
    anim_config = config.animator
    if anim_config.max_output_side is None:
        anim_config = replace(anim_config, max_output_side=config.output_size or anim_config.size)
    try:
        animator = Animator(image, anim_config, name=name, generator=config.generator)
    except NoFaceError:
        raise CamError(
            f"no face in the source portrait {name}: use a photo with one clearly visible, "
            "roughly frontal face"
        ) from None
    except ImageError as exc:
        raise CamError(f"--source {exc}") from None
    height, width = _pad_even(animator.source).shape[:2]

    camera: FrameSource
    if camera_is_file:
        camera = FileCamera(config.camera, realtime=realtime)
    else:
        camera = LiveCamera(config.camera, config.fps)
    status = StatusLine(status_stream) if config.status else None
    t_start = time.monotonic()
    loop: _Loop | None = None
    try:
        with contextlib.ExitStack() as stack:
            stack.enter_context(raise_on_sigterm(Terminated))
            if keys is None:
                terminal = stack.enter_context(TerminalKeys()) if config.hotkeys else None
                keys = terminal.read if terminal is not None else (lambda: "")
            loop = _Loop(config, animator, camera, realtime, keys, status)
            if out_path is not None:
                fps = Fraction(camera.fps if camera_is_file and not realtime else config.fps)
                audio = camera.path if isinstance(camera, FileCamera) and camera.has_audio else None
                try:
                    write_video(out_path, loop.frames(), fps.limit_denominator(1001), audio_from=audio)
                except MediaError as exc:
                    raise CamError(f"--output {exc}") from None
                label = str(out_path)
            else:
                factory = virtual_camera or pyvirtualcam_camera
                vcam = factory(width, height, config.fps, config.virtual_device)
                stack.callback(vcam.close)
                label = str(getattr(vcam, "device", "virtual camera"))
                if not camera_is_file and os.path.realpath(camera.label) == os.path.realpath(label):
                    raise CamError(
                        f"--camera {camera.label} is the virtual camera itself: pick the real webcam"
                    )
                for frame in loop.frames():
                    vcam.send(frame)
            if status is not None:
                status.update(loop.status_text(time.monotonic()), time.monotonic(), force=True)
    except Terminated:  # outside the frame loop (while encoding or sending): nothing half-written stays
        raise CamError("stopped by SIGTERM" + (f"; {out_path} was not written" if out_path else "")) from None
    finally:
        if status is not None:
            status.close()
        camera.close()
        if loop is not None:
            loop.session.close()
    return CamReport(
        output=label,
        width=width,
        height=height,
        frames_in=loop.frames_in,
        frames_out=loop.frames_out,
        dropped=camera.dropped,
        face_frames=loop.face_frames,
        seconds=time.monotonic() - t_start,
        stopped=loop.stopped,
        stage_ms=_ms(loop.samples),
        generator_on=loop.generator_on,
    )
