"""Test and bench helpers: aiortc clients for the live server (WHIP, WHEP and the page's
/offer), a stamped real-face video track, and a server runner on 127.0.0.1.

Every wait here is bounded by a timeout or a frame count.
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import functools
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from rt_portrait.server.app import AccessLogger, ServerConfig, build_app
from rt_portrait.server.session import loopback_ice, new_peer_connection

TIME_BASE = fractions.Fraction(1, 90000)
STAMP_BITS = 12


@functools.lru_cache(maxsize=4)
def face_frames(
    size: int, count: int = 96, video: str = "WolfgangLanger_Pexels.mp4", start: int = 0
) -> tuple[np.ndarray, ...]:
    """``count`` consecutive frames of a real talking-face video, centre-cropped square and
    resized to ``size`` (RGB uint8)."""
    import av
    from PIL import Image

    from rt_portrait.core.assets import pyfeat_file

    out: list[np.ndarray] = []
    with av.open(str(pyfeat_file(video))) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i < start:
                continue
            rgb = frame.to_ndarray(format="rgb24")
            h, w = rgb.shape[:2]
            s = min(h, w)
            y0, x0 = (h - s) // 2, (w - s) // 2
            crop = Image.fromarray(rgb[y0 : y0 + s, x0 : x0 + s]).resize((size, size), Image.BILINEAR)
            out.append(np.asarray(crop))
            if len(out) >= count:
                break
    if not out:
        raise RuntimeError(f"could not decode frames from {video}")
    return tuple(out)


def stamp(image: np.ndarray, index: int, rows: int) -> np.ndarray:
    """Write ``index`` as STAMP_BITS black/white blocks across the top ``rows`` rows."""
    out = image.copy()
    w = out.shape[1]
    bw = w // STAMP_BITS
    for bit in range(STAMP_BITS):
        out[:rows, bit * bw : (bit + 1) * bw] = 255 if (index >> bit) & 1 else 0
    return out


def read_stamp(image: np.ndarray, rows: int) -> int:
    w = image.shape[1]
    bw = w // STAMP_BITS
    strip = (
        image[2 : max(3, rows - 2)].mean(axis=(0, 2)) if image.ndim == 3 else image[2 : rows - 2].mean(axis=0)
    )
    value = 0
    for bit in range(STAMP_BITS):
        seg = strip[bit * bw + bw // 4 : (bit + 1) * bw - bw // 4]
        if seg.mean() > 128:
            value |= 1 << bit
    return value


def mouth_openings(images: list[np.ndarray]) -> list[float | None]:
    """Inner-lip gap over face height (landmarks 13/14 over 10/152); None without a face."""
    import mediapipe as mp

    out: list[float | None] = []
    with mp.solutions.face_mesh.FaceMesh(
        static_image_mode=True, refine_landmarks=True, max_num_faces=1
    ) as mesh:
        for image in images:
            res = mesh.process(np.ascontiguousarray(image))
            if not res.multi_face_landmarks:
                out.append(None)
                continue
            lm = res.multi_face_landmarks[0].landmark
            gap = np.hypot(lm[13].x - lm[14].x, lm[13].y - lm[14].y)
            height = np.hypot(lm[10].x - lm[152].x, lm[10].y - lm[152].y)
            out.append(float(gap / max(height, 1e-6)))
    return out


def open_vs_shut_auc(driver: np.ndarray, avatar: np.ndarray) -> tuple[float, tuple[int, int]]:
    """How often an avatar frame whose driver mouth is among the most open third shows a wider
    mouth than one among the most shut third (the area under the ROC curve; 0.5 = unrelated),
    and the two group sizes. A rank statistic: the avatar's response to a talking mouth is a
    step, not a line."""
    shut_below, open_above = np.quantile(driver, [1 / 3, 2 / 3])
    shut, opened = avatar[driver <= shut_below], avatar[driver >= open_above]
    auc = float(np.mean(opened[:, None] > shut[None, :]) + 0.5 * np.mean(opened[:, None] == shut[None, :]))
    return auc, (len(shut), len(opened))


class FaceVideoTrack(MediaStreamTrack):
    """Plays real face frames at ``fps`` (looping), optionally stamped with the frame index,
    and records when each frame left. Ends after ``max_frames``."""

    kind = "video"

    def __init__(
        self,
        frames: tuple[np.ndarray, ...],
        fps: float = 30.0,
        stamp_rows: int = 0,
        max_frames: int = 100_000,
    ) -> None:
        super().__init__()
        self.frames = frames
        self.fps = fps
        self.stamp_rows = stamp_rows
        self.max_frames = max_frames
        self.sent = 0
        self.sent_at: dict[int, float] = {}
        self._t0: float | None = None

    async def recv(self) -> VideoFrame:
        if self.sent >= self.max_frames or self.readyState != "live":
            self.stop()
            raise MediaStreamError
        now = time.perf_counter()
        if self._t0 is None:
            self._t0 = now
        due = self._t0 + self.sent / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        index = self.sent
        image = self.frames[index % len(self.frames)]
        if self.stamp_rows:
            image = stamp(image, index % (1 << STAMP_BITS), self.stamp_rows)
        frame = VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts = int(index * 90000 / self.fps)
        frame.time_base = TIME_BASE
        self.sent_at[index % (1 << STAMP_BITS)] = time.perf_counter()
        self.sent += 1
        return frame


@dataclass
class Sink:
    """Consumes a received track: counts frames, keeps every ``keep_every``-th image, and
    (with ``stamp_rows``) the stamp read from each frame with its arrival time."""

    keep_every: int = 0
    stamp_rows: int = 0
    max_kept: int = 200
    count: int = 0
    kept: list[np.ndarray] = field(default_factory=list)
    stamps: list[tuple[int, float]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None
    sizes: set[tuple[int, int]] = field(default_factory=set)

    def start(self, track: MediaStreamTrack) -> None:
        self.task = asyncio.ensure_future(self._run(track))

    async def _run(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                frame = await track.recv()
                t = time.perf_counter()
                self.count += 1
                self.sizes.add((frame.height, frame.width))
                need_image = self.stamp_rows or (self.keep_every and self.count % self.keep_every == 0)
                if need_image:
                    image = frame.to_ndarray(format="rgb24")
                    if self.stamp_rows:
                        self.stamps.append((read_stamp(image, self.stamp_rows), t))
                    if (
                        self.keep_every
                        and self.count % self.keep_every == 0
                        and len(self.kept) < self.max_kept
                    ):
                        self.kept.append(image)

    async def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.count < count and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return self.count >= count

    def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()


async def _offer(pc: RTCPeerConnection) -> str:
    with loopback_ice(True):
        await pc.setLocalDescription(await pc.createOffer())
    return pc.localDescription.sdp


async def _post_offer(
    http: aiohttp.ClientSession, url: str, pc: RTCPeerConnection, kind: str, token: str | None = None
) -> tuple[str, str]:
    """WHIP/WHEP exchange: POST the SDP offer, expect 201, apply the answer; returns the
    Location and Link headers."""
    sdp = await _offer(pc)
    headers = {"Content-Type": "application/sdp"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    async with http.post(url, data=sdp, headers=headers) as resp:
        body = await resp.text()
        if resp.status != 201:
            await pc.close()
            raise RuntimeError(f"{kind} failed: {resp.status} {body}")
        location, link = resp.headers["Location"], resp.headers.get("Link", "")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
    return location, link


_WHEP_LINK = re.compile(r'<([^>]*/whep/[^>]+)>\s*;\s*rel="?whep"?')


@dataclass
class WhipCall:
    pc: RTCPeerConnection
    location: str  # /whip/<session>: the owner's capability
    whep: str  # /whep/<viewer>: the playback URL from the Link header

    @property
    def session(self) -> str:
        return self.location.rsplit("/", 1)[1]


async def whip_start(
    http: aiohttp.ClientSession, base: str, track: MediaStreamTrack, token: str | None = None
) -> WhipCall:
    pc = new_peer_connection()
    pc.addTransceiver(track, direction="sendonly")
    location, link = await _post_offer(http, f"{base}/whip", pc, "WHIP", token)
    m = _WHEP_LINK.search(link)
    return WhipCall(pc, location, m.group(1) if m else "")


async def whip_publish(
    http: aiohttp.ClientSession, base: str, track: MediaStreamTrack, token: str | None = None
) -> tuple[RTCPeerConnection, str]:
    call = await whip_start(http, base, track, token)
    return call.pc, call.location


async def whep_play(
    http: aiohttp.ClientSession, base: str, whep: str, sink: Sink
) -> tuple[RTCPeerConnection, str]:
    """Play ``whep`` (a /whep/<viewer> path, or the bare viewer capability) into ``sink``."""
    pc = new_peer_connection()
    pc.addTransceiver("video", direction="recvonly")

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        sink.start(track)

    path = whep if whep.startswith("/whep/") else f"/whep/{whep}"
    location, _link = await _post_offer(http, f"{base}{path}", pc, "WHEP")
    return pc, location


async def page_start(
    http: aiohttp.ClientSession, base: str, track: MediaStreamTrack, sink: Sink, token: str | None = None
) -> tuple[RTCPeerConnection, dict[str, Any]]:
    """What the page does: one sendrecv transceiver, the camera up and the avatar down.
    Returns the peer and the /offer answer (session and viewer capabilities)."""
    pc = new_peer_connection()
    pc.addTransceiver(track, direction="sendrecv")

    @pc.on("track")
    def _on_track(remote: MediaStreamTrack) -> None:
        sink.start(remote)

    sdp = await _offer(pc)
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with http.post(f"{base}/offer", json={"sdp": sdp, "type": "offer"}, headers=headers) as resp:
        body = await resp.json()
        if resp.status != 200:
            await pc.close()
            raise RuntimeError(f"offer failed: {resp.status} {body}")
    await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="answer"))
    return pc, body


async def page_call(
    http: aiohttp.ClientSession, base: str, track: MediaStreamTrack, sink: Sink
) -> tuple[RTCPeerConnection, str]:
    """``page_start`` returning the session's owner capability only."""
    pc, body = await page_start(http, base, track, sink)
    return pc, body["session"]


@contextlib.asynccontextmanager
async def running_server(config: ServerConfig) -> AsyncIterator[tuple[str, web.Application]]:
    """The server on 127.0.0.1 with a free port, in this event loop."""
    app = build_app(config)
    runner = web.AppRunner(app, handle_signals=False, access_log_class=AccessLogger)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", app
    finally:
        await asyncio.wait_for(runner.cleanup(), 20)


class ServerThread:
    """The server in a background thread with its own event loop (for synchronous callers
    such as selenium). ``start()`` returns the base URL; ``stop()`` is bounded."""

    def __init__(self, config: ServerConfig) -> None:
        import threading

        self.config = config
        self.base = ""
        self.app: web.Application | None = None
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="rt-portrait-server", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._main())

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        try:
            async with running_server(self.config) as (base, app):
                self.base, self.app = base, app
                self._ready.set()
                await self._stop.wait()
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def start(self, timeout: float = 120.0) -> str:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("server did not start")
        if self._error is not None:
            raise RuntimeError(f"server failed to start: {self._error!r}")
        return self.base

    def stop(self, timeout: float = 30.0) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)


@dataclass(frozen=True)
class Usage:
    rss_mb: float
    threads: int


def process_usage(pid: int | str = "self") -> Usage:
    """Resident memory and native thread count of a process (Linux /proc)."""
    fields: dict[str, str] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return Usage(rss_mb=int(fields["VmRSS"].split()[0]) / 1024, threads=int(fields["Threads"]))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``python -m rt_portrait.server.app`` on 127.0.0.1 (loopback-only ICE) in its own
    process, so the server does not share a GIL with the measuring client."""

    def __init__(self, extra_args: list[str]) -> None:
        import subprocess
        import sys
        import tempfile

        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [
            sys.executable,
            "-m",
            "rt_portrait.server.app",
            "--port",
            str(self.port),
            "--ice-loopback-only",
            *extra_args,
        ]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 -- lives as long as the browser process
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    async def wait_ready(self, timeout: float = 180.0) -> None:
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited: {self.output()[-2000:]}")
                try:
                    async with http.get(f"{self.base}/stats") as resp:
                        if resp.status == 200:
                            return
                except (OSError, aiohttp.ClientError):
                    pass
                await asyncio.sleep(0.3)
        raise TimeoutError(f"server did not start in {timeout} s: {self.output()[-2000:]}")

    def stop(self) -> None:
        import subprocess

        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
