"""Video and image files in and out (PyAV), with atomic writes.

An output file appears only when it is complete: everything is written to a temporary
file in the destination folder and renamed at the end, so a failure leaves nothing
half-written behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import av
import numpy as np


class MediaError(ValueError):
    """A media file cannot be read or written; the message names the file."""


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    width: int
    height: int
    fps: Fraction
    frames: int  # as stored in the container; 0 when unknown
    has_audio: bool


def probe(path: str | os.PathLike, *, decode_first: bool = False) -> VideoInfo:
    """The video's size, rate and length; ``decode_first`` also decodes one frame, so a
    corrupt payload behind a valid header fails here rather than mid-way through long work."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"{path}: no such file")
    try:
        with av.open(str(path)) as c:
            if not c.streams.video:
                raise MediaError(f"{path}: no video stream")
            v = c.streams.video[0]
            fps = v.average_rate or v.guessed_rate or Fraction(25)
            if decode_first and next(iter(c.decode(v)), None) is None:
                raise MediaError(f"{path}: no decodable video frame")
            return VideoInfo(
                path,
                v.codec_context.width,
                v.codec_context.height,
                Fraction(fps),
                int(v.frames or 0),
                bool(c.streams.audio),
            )
    except (av.FFmpegError, OSError) as e:
        raise MediaError(f"{path}: cannot read as video ({e})") from e


def read_frames(
    path: str | os.PathLike, *, every: int = 1, max_frames: int | None = None
) -> Iterator[np.ndarray]:
    """Decoded RGB frames, (H, W, 3) uint8, optionally every N-th and at most ``max_frames``."""
    path = Path(path)
    probe(path)
    n_out = 0
    try:
        with av.open(str(path)) as c:
            stream = c.streams.video[0]
            stream.thread_type = "AUTO"
            for i, frame in enumerate(c.decode(stream)):
                if i % every:
                    continue
                yield frame.to_ndarray(format="rgb24")
                n_out += 1
                if max_frames is not None and n_out >= max_frames:
                    return
    except av.FFmpegError as e:
        raise MediaError(f"{path}: decoding failed after {n_out} frames ({e})") from e


def read_frame_indices(
    path: str | os.PathLike, indices: Iterable[int], on_frame: Callable[[int, np.ndarray], None] | None = None
) -> dict[int, np.ndarray]:
    """The wanted frame indices (0-based, decode order) as (H, W, 3) uint8 RGB.

    ``on_frame(i, rgb)`` (optional) sees every decoded frame from the first wanted one to the
    last, wanted or not (a live tracker that must see the real frame rate)."""
    wanted = sorted(set(indices))
    out: dict[int, np.ndarray] = {}
    if not wanted:
        return out
    first, last = wanted[0], wanted[-1]
    want = set(wanted)
    for i, rgb in enumerate(read_frames(path, max_frames=last + 1)):
        if i in want:
            out[i] = rgb
        if on_frame is not None and i >= first:
            on_frame(i, rgb)
    return out


def count_frames(path: str | os.PathLike) -> int:
    """Frames in the video, by decoding it (containers may not store the count)."""
    return sum(1 for _ in read_frames(path))


def _current_umask() -> int:
    """The process umask: from /proc on Linux (reading it with os.umask means setting it, a
    race with other threads creating files), else set and restored at once."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it to ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".part{path.suffix}", dir=path.parent)
    # mkstemp makes the file 0600; the output gets what any new file would (0666 minus the umask)
    os.fchmod(fd, 0o666 & ~_current_umask())
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_video(
    path: str | os.PathLike,
    frames: Iterable[np.ndarray],
    fps: Fraction | float,
    *,
    audio_from: str | os.PathLike | None = None,
    crf: int = 20,
) -> Path:
    """Encode RGB frames to H.264 (yuv420p) and copy the audio of ``audio_from`` unchanged.

    Odd frame sizes are padded by one pixel (H.264 4:2:0 needs even sizes).
    """
    path = Path(path)
    fps = Fraction(fps).limit_denominator(1001 * 1000)
    with atomic_output(path) as tmp, av.open(str(tmp), "w", format="mp4") as out:
        vstream = None
        audio_in = None
        astream_out = None
        if audio_from is not None:
            src = av.open(str(audio_from))
            if src.streams.audio:
                audio_in = src
                astream_out = out.add_stream_from_template(src.streams.audio[0])
            else:
                src.close()
        try:
            n = 0
            for frame in frames:
                if vstream is None:
                    h, w = frame.shape[:2]
                    vstream = out.add_stream("libx264", rate=fps)
                    vstream.width, vstream.height = w + (w % 2), h + (h % 2)
                    vstream.pix_fmt = "yuv420p"
                    vstream.options = {"crf": str(crf), "preset": "veryfast"}
                if frame.shape[0] % 2 or frame.shape[1] % 2:
                    frame = np.pad(
                        frame, ((0, frame.shape[0] % 2), (0, frame.shape[1] % 2), (0, 0)), mode="edge"
                    )
                vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
                out.mux(vstream.encode(vf))
                n += 1
            if vstream is None:
                raise MediaError(f"{path}: no frames to write")
            out.mux(vstream.encode(None))
            if audio_in is not None:
                duration = n / fps
                ain = audio_in.streams.audio[0]
                for packet in audio_in.demux(ain):
                    if packet.dts is None:
                        continue
                    if (
                        packet.pts is not None
                        and ain.time_base is not None
                        and packet.pts * ain.time_base > duration
                    ):
                        break
                    assert astream_out is not None  # set together with audio_in
                    packet.stream = astream_out
                    out.mux(packet)
        finally:
            if audio_in is not None:
                audio_in.close()
    return path


def write_image(path: str | os.PathLike, rgb: np.ndarray) -> Path:
    from PIL import Image

    path = Path(path)
    fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}.get(path.suffix.lower())
    if fmt is None:
        raise MediaError(f"{path}: unsupported image extension (use .png, .jpg or .webp)")
    with atomic_output(path) as tmp:
        Image.fromarray(rgb).save(tmp, format=fmt)
    return path
