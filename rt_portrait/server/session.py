"""Per-session state of the live server: the driver reader, the processing worker and the
avatar tracks that carry its output to any number of players.

Frame policy: the reader keeps only the newest decoded driver frame (a slot, not a queue);
the worker takes whatever is newest when it becomes free, so a slow pipeline drops frames
instead of building lag. Each session has its own single-thread executor, because an
``AnimatorSession`` is stateful and must see its frames in order, and so that one slow or
failing session never blocks another's work.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import fractions
import logging
import math
import re
import secrets
import time
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
from aiortc import MediaStreamTrack, RTCConfiguration, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from av import VideoFrame

from rt_portrait.core.image import resize
from rt_portrait.generator import Generator
from rt_portrait.generator.select import generator_kind, generator_steps, with_steps
from rt_portrait.head.edits import RANGES
from rt_portrait.head.types import Edits, Strengths
from rt_portrait.pipeline import AnimatedFrame, Animator, AnimatorSession
from rt_portrait.server.memory import trim_native_heap
from rt_portrait.tracking import TrackResult

log = logging.getLogger(__name__)

VIDEO_TIME_BASE = fractions.Fraction(1, 90000)

# ---------------------------------------------------------------------------------------
# ICE restricted to loopback
# ---------------------------------------------------------------------------------------
# aioice gathers host candidates from every interface (and skips 127.0.0.1). Tests and
# benchmarks must keep all traffic on loopback, so gathering consults this context variable:
# only code running inside ``loopback_ice()`` (or a task started from it) is affected, and
# the wrapper delegates to aioice's own function otherwise.
_LOOPBACK_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "rt_portrait_loopback_ice", default=False
)


def _install_loopback_hook() -> None:
    import aioice.ice

    current = aioice.ice.get_host_addresses
    if getattr(current, "_rt_portrait_hook", False):
        return
    original = current

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        if _LOOPBACK_ONLY.get():
            return ["127.0.0.1"] if use_ipv4 else []
        return original(use_ipv4=use_ipv4, use_ipv6=use_ipv6)

    get_host_addresses._rt_portrait_hook = True  # type: ignore[attr-defined]
    aioice.ice.get_host_addresses = get_host_addresses


@contextlib.contextmanager
def loopback_ice(enabled: bool = True) -> Iterator[None]:
    """Within this block (and tasks it starts), ICE gathers only a 127.0.0.1 candidate."""
    if not enabled:
        yield
        return
    _install_loopback_hook()
    token = _LOOPBACK_ONLY.set(True)
    try:
        yield
    finally:
        _LOOPBACK_ONLY.reset(token)


_CANDIDATE = re.compile(r"^a=candidate:\S+ \d+ \S+ \d+ (\S+) ", re.IGNORECASE)


def keep_loopback_candidates(sdp: str) -> str:
    """Drop remote ICE candidates that are not 127.0.0.1 (no LAN or mDNS checks in tests)."""
    out = []
    for line in sdp.splitlines():
        m = _CANDIDATE.match(line)
        if m and m.group(1) != "127.0.0.1":
            continue
        out.append(line)
    return "\r\n".join(out) + "\r\n"


# When a close lands while aioice's connect() holds an ICE_COMPLETED result it has not read
# yet, connect() resumes after close() and starts the consent-check task (RFC 7675) on closed
# sockets; 4-6 s later that task sends on a closed datagram transport and dies with an
# AttributeError that nothing retrieves (seen once in CI, aioice 0.13). The sweeps cancel such a
# task; a task started on a connection still open is left alone. Its first send comes at
# least 4 s after it starts, so the last sweep still catches one started 3 s after the close.
CONSENT_SWEEPS_S = (0.0, 1.0, 3.0)


def ice_connections(pc: RTCPeerConnection) -> list[Any]:
    """The aioice connections under a peer connection's transports (media and data)."""
    ice: list[Any] = []
    for transceiver in pc.getTransceivers():
        for dtls in (transceiver.receiver.transport, transceiver.sender.transport):
            if dtls is not None:
                ice.append(dtls.transport)
    if pc.sctp is not None:
        ice.append(pc.sctp.transport.transport)
    connections = (getattr(t, "_connection", None) for t in dict.fromkeys(ice))
    return [c for c in connections if c is not None]


def cancel_orphan_consent_checks(connections: list[Any]) -> int:
    """Cancel the consent-check task of every closed connection; returns how many."""
    cancelled = 0
    for connection in connections:
        task = getattr(connection, "_query_consent_task", None)
        if getattr(connection, "_closing", False) and task is not None and not task.done():
            task.cancel()
            cancelled += 1
    return cancelled


def _sweep_consent_checks(connections: list[Any]) -> None:
    loop = asyncio.get_running_loop()
    for delay in CONSENT_SWEEPS_S:
        loop.call_later(delay, cancel_orphan_consent_checks, connections)


async def close_peer(pc: RTCPeerConnection, timeout_s: float = 5.0) -> None:
    """Close a peer connection whatever state a hostile offer left it in. aiortc's close()
    raises half-way on a transceiver left without a transport (and a second close() then
    waits forever): stop what exists by hand, bounded in time."""
    connections = ice_connections(pc)  # before the close, which may detach the transports
    try:
        await asyncio.wait_for(pc.close(), timeout_s)
        _sweep_consent_checks(connections)
        return
    except Exception as exc:
        log.debug("peer close failed (%s: %s); stopping its transports by hand", type(exc).__name__, exc)
    transports: list[object] = []
    for transceiver in pc.getTransceivers():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transceiver.stop(), timeout_s)
        for dtls in (transceiver.receiver.transport, transceiver.sender.transport):
            if dtls is not None:
                transports += [dtls, dtls.transport]
    if pc.sctp is not None:
        transports += [pc.sctp.transport, pc.sctp.transport.transport]
    for transport in dict.fromkeys(transports):  # DTLS before ICE, each once
        with contextlib.suppress(Exception):
            await asyncio.wait_for(transport.stop(), timeout_s)  # type: ignore[attr-defined]
    pc.remove_all_listeners()
    _sweep_consent_checks(connections)


def new_peer_connection() -> RTCPeerConnection:
    # No STUN/TURN servers: aiortc's default would contact a public STUN server.
    return RTCPeerConnection(RTCConfiguration(iceServers=[]))


# ---------------------------------------------------------------------------------------
# Controls
# ---------------------------------------------------------------------------------------
EDIT_RANGES = RANGES  # the head model's documented edit ranges
STRENGTH_RANGE = (0.0, 2.0)


class ControlError(ValueError):
    """A control message names an unknown field or carries a non-numeric value."""


def _merge(
    current: object, updates: object, ranges: dict[str, tuple[float, float]], what: str
) -> dict[str, float]:
    if not isinstance(updates, dict):
        raise ControlError(f"{what} must be a JSON object of numbers")
    values = {f.name: float(getattr(current, f.name)) for f in fields(current)}  # type: ignore[arg-type]
    for key, raw in updates.items():
        if key not in values:
            raise ControlError(f"unknown {what} field {key!r}; expected one of {sorted(values)}")
        if isinstance(raw, bool) or not isinstance(raw, (int, float)):
            raise ControlError(f"{what}.{key} must be a finite number, got {str(raw)[:40]!r}")
        try:
            value = float(raw)  # a JSON integer may have hundreds of digits: OverflowError
        except OverflowError:
            value = float("nan")
        if not math.isfinite(value):
            raise ControlError(f"{what}.{key} must be a finite number, got {str(raw)[:40]}")
        lo, hi = ranges[key]
        values[key] = min(max(value, lo), hi)  # clamp: a slider overshoot is not an error
    return values


def merged_edits(current: Edits, updates: object) -> Edits:
    return Edits(**_merge(current, updates, EDIT_RANGES, "edits"))


def merged_strengths(current: Strengths, updates: object) -> Strengths:
    ranges = {f.name: STRENGTH_RANGE for f in fields(Strengths)}
    return Strengths(**_merge(current, updates, ranges, "strengths"))


# ---------------------------------------------------------------------------------------
# Output fan-out
# ---------------------------------------------------------------------------------------
class OutputBus:
    """Newest output frame of a session, shared by every player (no per-player queue)."""

    def __init__(self, idle_image: np.ndarray) -> None:
        self.seq = 0
        self.frame: VideoFrame | None = None
        self.image = idle_image  # what a player shows before (or between) driven frames
        self._event = asyncio.Event()
        self._t0 = time.monotonic()
        self.closed = False

    def pts(self) -> int:
        return int((time.monotonic() - self._t0) * 90000)

    def publish(self, frame: VideoFrame, image: np.ndarray) -> None:
        self.frame, self.image = frame, image
        self.seq += 1
        event, self._event = self._event, asyncio.Event()
        event.set()

    def close(self) -> None:
        self.closed = True
        self._event.set()

    async def wait(self, after_seq: int, timeout: float) -> bool:
        if self.seq > after_seq or self.closed:
            return True
        event = self._event
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(event.wait(), timeout)
        return self.seq > after_seq


class AvatarTrack(MediaStreamTrack):
    """One player's view of a session's output. Re-sends the current image once a second
    while no new frame arrives, so a player that joins an idle session still sees it."""

    kind = "video"

    def __init__(self, bus: OutputBus, idle_interval_s: float = 1.0) -> None:
        super().__init__()
        self._bus = bus
        self._seen = 0
        self._idle = idle_interval_s
        self.frames_sent = 0

    async def recv(self) -> VideoFrame:
        if self.readyState != "live" or self._bus.closed:
            raise MediaStreamError
        fresh = await self._bus.wait(self._seen, self._idle)
        if self._bus.closed:
            raise MediaStreamError
        if fresh and self._bus.frame is not None:
            self._seen = self._bus.seq
            frame = self._bus.frame
        else:
            frame = VideoFrame.from_ndarray(self._bus.image, format="rgb24")
            frame.pts, frame.time_base = self._bus.pts(), VIDEO_TIME_BASE
        self.frames_sent += 1
        return frame


# ---------------------------------------------------------------------------------------
# Stats
# ---------------------------------------------------------------------------------------
@dataclass
class _Rate:
    """Events per second over a sliding window of timestamps (bounded)."""

    window_s: float = 2.0
    stamps: list[float] = field(default_factory=list)

    def tick(self, now: float) -> None:
        self.stamps.append(now)
        cut = now - self.window_s
        while self.stamps and self.stamps[0] < cut:
            self.stamps.pop(0)
        del self.stamps[:-512]

    def rate(self, now: float) -> float:
        recent = [t for t in self.stamps if t >= now - self.window_s]
        if len(recent) < 2:
            return 0.0
        span = max(now - recent[0], 1e-6)
        return (len(recent) - 1) / span


@dataclass
class SessionStats:
    frames_in: int = 0
    frames_out: int = 0
    dropped: int = 0
    errors: int = 0  # frames lost to a failure
    faults: dict[str, int] = field(default_factory=dict)  # recovered failures per stage
    last_error: str = ""
    face_found: bool | None = None
    size: int = 0
    degrade_level: int = 0  # 0 = full quality; each level = one step down (generator steps, then size)
    generator: str = ""  # the generator the session runs now, e.g. "diffusion 2 steps", "warp"
    stage_ms: dict[str, float] = field(default_factory=dict)  # EMA per stage
    age_ms: float = 0.0  # receive -> output published, EMA
    rate_in: _Rate = field(default_factory=_Rate)
    rate_out: _Rate = field(default_factory=_Rate)

    def ema(self, key: str, value: float, alpha: float = 0.2) -> None:
        prev = self.stage_ms.get(key)
        self.stage_ms[key] = value if prev is None else prev + alpha * (value - prev)


# ---------------------------------------------------------------------------------------
# Media time
# ---------------------------------------------------------------------------------------
def frame_seconds(frame: VideoFrame) -> float | None:
    """A decoded frame's presentation time in seconds (None without pts or time base)."""
    if frame.pts is None or frame.time_base is None:
        return None
    return float(frame.pts * frame.time_base)


class MediaClock:
    """Driver frame presentation times as seconds since the session's first frame.

    The time step between frames comes from their pts, so dropped frames show as longer
    steps. RTP timestamps are 32-bit (at 90 kHz they wrap every 13.3 h) and a sender may
    restart them: a step that goes backwards, or jumps further than ``max_step_s``, is
    replaced by the arrival-time step. Frames without a pts use arrival times."""

    def __init__(self, max_step_s: float = 5.0) -> None:
        self.max_step_s = max_step_s
        self.t = 0.0
        self._pts: float | None = None
        self._arrival: float | None = None

    def __call__(self, pts_s: float | None, arrival_s: float) -> float:
        if self._arrival is not None:
            arrived = max(arrival_s - self._arrival, 0.0)
            step = arrived if pts_s is None or self._pts is None else pts_s - self._pts
            if not 0.0 < step <= self.max_step_s:
                step = max(arrived, 1e-3)  # wrapped, restarted or reordered
            self.t += step
        self._pts, self._arrival = pts_s, arrival_s
        return self.t


# ---------------------------------------------------------------------------------------
# Session
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionLimits:
    fps: float = 30.0
    min_size: int = 128
    size_step: int = 64
    probe_rows: int = 0  # copy the driver's top rows onto the output (latency probes)
    echo: bool = False  # no processing: return the driver frame (transport baseline)
    max_consecutive_errors: int = 30
    max_viewers: int = 4


_RECOVERY = {"tracker": "held as a frame without a face", "generator": "rendered with the warp generator"}


def generator_ladder(animator: Animator) -> list[tuple[str, Generator]]:
    """The generators a session degrades through, best first: the configured one, the same
    network in 1 sampling step (when configured with more), then the learning-free warp fill."""
    gen = animator.generator
    steps = generator_steps(gen)
    if steps is None:  # no network: nothing cheaper than the generator itself
        return [(generator_kind(gen), gen)]
    ladder: list[tuple[str, Generator]] = [(f"diffusion {steps} step{'s' if steps > 1 else ''}", gen)]
    if steps > 1:
        ladder.append(("diffusion 1 step", with_steps(gen, 1)))
    ladder.append(("warp", animator.warp_generator))
    return ladder


def _copy_probe_rows(driver: np.ndarray, out: np.ndarray, rows: int) -> np.ndarray:
    """Nearest-resize the driver's top ``rows`` rows onto the top of ``out``."""
    h_out, w_out = out.shape[:2]
    scale = w_out / driver.shape[1]
    rows_out = min(h_out, max(1, round(rows * scale)))
    rows_in = min(driver.shape[0], max(1, round(rows_out / scale)))
    out = out.copy()
    out[:rows_out] = resize(driver[:rows_in], (rows_out, w_out), nearest=True)
    return out


class Session:
    """One driver (page or WHIP ingest) with its pipeline state and its players."""

    def __init__(
        self, kind: str, animator: Animator, limits: SessionLimits, on_closed: Callable[[Session], None]
    ) -> None:
        # Capabilities (secrets.token_urlsafe(24): 192 random bits). ``id`` is the owner's:
        # DELETE, control, source, its own stats. ``viewer_id`` grants playback only.
        # ``label`` names the session in logs and public stats without granting anything.
        self.id = secrets.token_urlsafe(24)
        self.viewer_id = secrets.token_urlsafe(24)
        self.label = uuid.uuid4().hex[:8]
        self.kind = kind  # "page" or "whip"
        self.limits = limits
        self.created = time.time()
        self.pc: RTCPeerConnection | None = None
        self.viewers: dict[str, RTCPeerConnection] = {}
        self.stats = SessionStats(size=animator.config.size)
        self.bus = OutputBus(np.ascontiguousarray(animator.source))
        self._anim: AnimatorSession = animator.session()
        from rt_portrait.engines.frames import frame_converter

        # decoded frame -> RGB and RGB -> I420: CuPy kernels on CUDA, PyAV on the CPU
        self._frames = frame_converter(animator.config.device)
        self.edits: Edits = Edits(**vars(self._anim.edits))
        self.strengths: Strengths = Strengths(**vars(self._anim.retarget.strengths))
        self._full_size = self._anim.size
        self._ladder = generator_ladder(animator)
        self._gen_level = 0  # index into the ladder: 0 = the configured generator
        self._gen_ratio: dict[int, float] = {}  # per ladder level: generator ms / the rest's ms
        self._use_generator(0)
        self._source_name = animator.name
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"session-{self.label}")
        self._newest: tuple[VideoFrame, float] | None = None
        self._new_frame = asyncio.Event()
        self._recalibrate = False
        self._tasks: list[asyncio.Future[None]] = []
        self._closing: asyncio.Future[None] | None = None  # a self-initiated close, kept referenced
        self._worker: asyncio.Future[None] | None = None
        self._last_resize = 0  # frames_out at the last working-size change
        self._on_closed = on_closed
        self._close_task: asyncio.Future[None] | None = None
        self._clock = MediaClock()
        self.closed = False

    # -- controls (called from the event loop; swaps are atomic attribute assignments) --
    @property
    def source_name(self) -> str:
        return self._source_name

    def set_controls(self, payload: object) -> None:
        if not isinstance(payload, dict):
            raise ControlError("control message must be a JSON object")
        unknown = set(payload) - {"edits", "strengths", "recalibrate"}
        if unknown:
            raise ControlError(
                f"unknown control keys {sorted(unknown)}; expected edits, strengths, recalibrate"
            )
        # Validate everything before changing anything; the worker hands these to the
        # pipeline before its next frame (whole-object swaps, no torn updates).
        edits = merged_edits(self.edits, payload["edits"]) if "edits" in payload else self.edits
        strengths = (
            merged_strengths(self.strengths, payload["strengths"])
            if "strengths" in payload
            else self.strengths
        )
        self.edits, self.strengths = edits, strengths
        if payload.get("recalibrate"):
            self._recalibrate = True

    def controls(self) -> dict[str, dict[str, float]]:
        return {"edits": dict(vars(self.edits)), "strengths": dict(vars(self.strengths))}

    def set_animator(self, animator: Animator) -> None:
        """Switch the source portrait, keeping the user's edits and strengths."""
        new = animator.session()
        if self.closed:
            new.close()
            return
        old, self._anim = self._anim, new
        self._full_size = new.size
        self._ladder = generator_ladder(animator)
        self._gen_ratio = {}
        self._use_generator(0)
        self._source_name = animator.name
        # The old pipeline state (its tracker graph) is released in the session's own thread,
        # after any frame that is using it: the executor runs its jobs in order.
        self._executor.submit(_release, old)
        self.stats.degrade_level = 0
        self._last_resize = self.stats.frames_out
        self.bus.image = np.ascontiguousarray(animator.source)

    # -- media --
    def attach_driver(self, track: MediaStreamTrack) -> None:
        if track.kind == "video":
            self._tasks.append(asyncio.ensure_future(self._read(track)))
            if self._worker is None:
                self._worker = asyncio.ensure_future(self._work())
                self._tasks.append(self._worker)
        else:
            # Audio (e.g. from OBS) is not used, but must be drained: aiortc buffers
            # undelivered decoded frames without bound.
            self._tasks.append(asyncio.ensure_future(self._drain(track)))

    def new_viewer_track(self) -> AvatarTrack:
        return AvatarTrack(self.bus)

    async def _drain(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError, asyncio.CancelledError):
            while True:
                await track.recv()

    async def _read(self, track: MediaStreamTrack) -> None:
        try:
            while True:
                frame = await track.recv()
                if not isinstance(frame, VideoFrame):  # a video track only yields video frames
                    continue
                now = time.perf_counter()
                self.stats.frames_in += 1
                self.stats.rate_in.tick(now)
                if self._newest is not None:
                    self.stats.dropped += 1  # the worker never saw it: stale
                self._newest = (frame, now)
                self._new_frame.set()
        except MediaStreamError:
            log.info("session %s: driver track ended", self.label)
            self._closing = asyncio.ensure_future(self.close())
        except asyncio.CancelledError:
            pass

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        consecutive_errors = 0
        try:
            while not self.closed:
                await self._new_frame.wait()
                self._new_frame.clear()
                if self._newest is None:
                    continue
                frame, t_recv = self._newest
                self._newest = None
                try:
                    out, image = await loop.run_in_executor(self._executor, self._process, frame, t_recv)
                    consecutive_errors = 0
                except Exception as exc:
                    consecutive_errors += 1
                    self.stats.errors += 1
                    self.stats.last_error = f"{type(exc).__name__}: {exc}"
                    if consecutive_errors == 1:  # the first of a run with its traceback, not every frame
                        log.exception("session %s: frame failed", self.label)
                    if consecutive_errors >= self.limits.max_consecutive_errors:
                        log.error(
                            "session %s: %d consecutive errors, closing", self.label, consecutive_errors
                        )
                        self._closing = asyncio.ensure_future(self.close())
                        return
                    continue
                if self.closed:
                    return
                out.pts, out.time_base = self.bus.pts(), VIDEO_TIME_BASE
                self.bus.publish(out, image)
                now = time.perf_counter()
                self.stats.frames_out += 1
                self.stats.rate_out.tick(now)
                age = (now - t_recv) * 1e3
                self.stats.age_ms = (
                    age if self.stats.frames_out == 1 else self.stats.age_ms + 0.2 * (age - self.stats.age_ms)
                )
        except asyncio.CancelledError:
            pass

    def _process(self, frame: VideoFrame, arrival_s: float | None = None) -> tuple[VideoFrame, np.ndarray]:
        """Runs in the session's executor thread. Smoothing runs on the frame's presentation
        time (its pts), so frames dropped under load lengthen the filter's time step."""
        t = self._clock(frame_seconds(frame), time.perf_counter() if arrival_s is None else arrival_s)
        t0 = time.perf_counter()
        rgb = self._frames.decode(frame)
        t1 = time.perf_counter()
        anim = self._anim
        anim.edits = self.edits
        anim.retarget.strengths = self.strengths
        if self._recalibrate:
            self._recalibrate = False
            anim.recalibrate()
        if self.limits.echo:
            image, timings, face = rgb, {}, None
        else:
            result = self._animate(anim, rgb, t)
            image, timings, face = result.image, result.timings_ms, result.face_found
        t2 = time.perf_counter()
        if self.limits.probe_rows > 0:
            image = _copy_probe_rows(rgb, image, self.limits.probe_rows)
        out = self._frames.encode(image)
        t3 = time.perf_counter()
        st = self.stats
        st.face_found = face
        st.ema("decode", (t1 - t0) * 1e3)
        for key, value in timings.items():
            st.ema(key, float(value))
        st.ema("pipeline", (t2 - t1) * 1e3)
        st.ema("encode_prep", (t3 - t2) * 1e3)
        st.ema("server_total", (t3 - t0) * 1e3)
        if not self.limits.echo:
            self._degrade(anim, st.stage_ms["server_total"])
        st.size = anim.size
        return out, image

    def _animate(self, anim: AnimatorSession, rgb: np.ndarray, t: float) -> AnimatedFrame:
        """Drive and render one frame; a failing stage costs quality, not the frame. The
        tracker raising: the frame counts as one without a face (the pipeline holds the last
        motion, then eases back to neutral). The generator raising: the frame is rendered again
        with the learning-free warp generator. Each fault is logged and counted in stats."""
        if not hasattr(anim, "drive"):  # a stand-in stage (tests): one call does it all
            return anim(rgb, t=t)
        t0 = time.perf_counter()
        try:
            target, found, timings = anim.drive(rgb, t)
        except Exception as exc:
            self._fault("tracker", exc)
            lost = TrackResult(
                found=False, face=None, image_size=(rgb.shape[0], rgb.shape[1]), message="tracker failed"
            )
            target, found, timings = anim.drive_track(lost, t)
        # the generator this frame renders with, read once: controls and degradation may swap
        # the session's meanwhile, and the fallback must not be mistaken for the failure
        generator = anim.generator
        try:
            return anim.render_target(target, found, timings, t0, generator)
        except Exception as exc:
            warp = anim.animator.warp_generator
            if generator is warp:
                raise
            self._fault("generator", exc)
            return anim.render_target(target, found, timings, t0, warp)

    def _fault(self, stage: str, exc: Exception) -> None:
        """A recovered failure: counted per stage; the first one logged with its traceback,
        later ones every 100th as one line (a broken stage fails on every frame)."""
        st = self.stats
        n = st.faults[stage] = st.faults.get(stage, 0) + 1
        st.last_error = f"{stage}: {type(exc).__name__}: {exc}"[:300]
        if n == 1:
            log.exception("session %s: %s failed; recovering (%s)", self.label, stage, _RECOVERY[stage])
        elif n % 100 == 0:
            log.warning("session %s: %s failed %d times: %s", self.label, stage, n, st.last_error)

    def _use_generator(self, level: int) -> None:
        """Run the ladder's generator ``level`` (0 = the configured one)."""
        self._gen_level = level
        label, gen = self._ladder[level]
        self._anim.generator = gen
        self.stats.generator = label

    def _switch_generator(self, level: int, rest: float, total_ms: float, budget: float) -> None:
        st = self.stats
        self._use_generator(level)
        # restart the EMAs at the prediction (unknown: the rest alone, measured within 10 frames)
        st.stage_ms["server_total"] = rest * (1 + self._gen_ratio.get(level, 0.0))
        st.stage_ms.pop("generator", None)
        self._last_resize = st.frames_out
        log.info(
            "session %s: generator -> %s (%.1f ms per frame, budget %.1f)",
            self.label,
            st.generator,
            total_ms,
            budget,
        )

    def _degrade(self, anim: AnimatorSession, total_ms: float) -> None:
        """Over the frame budget, step down: the generator first (2 sampling steps -> 1, then
        off: the warp fill), then the working size; step back up (size first, then the
        generator) only when the cost predicted there (area-proportional for the size, the
        generator time last measured at that level) fits with a margin, so it does not
        oscillate. At the minimum size the newest-frame policy skips frames instead of
        building lag."""
        budget = 1000.0 / self.limits.fps
        st = self.stats
        if st.frames_out - self._last_resize < 10:
            return  # let the EMA settle after a start or a change
        size, step = anim.size, self.limits.size_step
        gen_ms = min(st.stage_ms.get("generator", 0.0), total_ms)
        rest = max(total_ms - gen_ms, 1e-3)  # everything but the generator
        if size == self._full_size:  # its cost relative to the rest: holds whatever the load
            self._gen_ratio[self._gen_level] = gen_ms / rest
        level = self._gen_level
        up = level - 1
        if total_ms > 0.9 * budget and level + 1 < len(self._ladder) and size == self._full_size:
            self._switch_generator(level + 1, rest, total_ms, budget)
            st.degrade_level += 1
            return
        if (
            level > 0
            and size == self._full_size
            and rest * (1 + self._gen_ratio.get(up, float("inf"))) < 0.75 * budget
        ):
            self._switch_generator(up, rest, total_ms, budget)
            st.degrade_level -= 1
            return
        if total_ms > 0.9 * budget and size - step >= self.limits.min_size:
            new = size - step
            st.degrade_level += 1
        elif (
            st.degrade_level > 0
            and size + step <= self._full_size
            and total_ms * ((size + step) / size) ** 2 < 0.75 * budget
        ):
            new = size + step
            st.degrade_level -= 1
        else:
            return
        anim.size = new
        st.stage_ms["server_total"] = total_ms * (new / size) ** 2  # restart the EMA at the prediction
        self._last_resize = st.frames_out
        log.info(
            "session %s: working size %d -> %d (%.1f ms per frame, budget %.1f)",
            self.label,
            size,
            new,
            total_ms,
            budget,
        )

    # -- reporting and teardown --
    def snapshot(self, private: bool = True) -> dict[str, object]:
        """Counts and timings; with ``private`` also what only the owner (or the admin) may
        see: the capabilities, the source name, the controls and the last error."""
        now = time.perf_counter()
        st = self.stats
        budget = 1000.0 / self.limits.fps
        public: dict[str, object] = {
            "label": self.label,
            "kind": self.kind,
            "state": self.pc.connectionState if self.pc else "new",
            "viewers": len(self.viewers),
            "frames_in": st.frames_in,
            "frames_out": st.frames_out,
            "dropped": st.dropped,
            "fps_in": round(st.rate_in.rate(now), 2),
            "fps_out": round(st.rate_out.rate(now), 2),
            "face_found": st.face_found,
            "size": st.size,
            "degrade_level": st.degrade_level,
            "generator": st.generator,
            "skipping": st.rate_out.rate(now) < 0.9 * st.rate_in.rate(now) and st.frames_out > 10,
            "budget_ms": round(budget, 2),
            "stage_ms": {k: round(v, 2) for k, v in st.stage_ms.items()},
            "age_ms": round(st.age_ms, 2),
            "errors": st.errors,
            "faults": dict(st.faults),
        }
        if not private:
            return public
        return {
            "id": self.id,
            "viewer": self.viewer_id,
            "whep": f"/whep/{self.viewer_id}",
            "source": self._source_name,
            **public,
            "last_error": st.last_error,
            "controls": self.controls(),
        }

    # -- connection watch --
    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """A task that ends with the session (cancelled by close())."""
        self._tasks = [t for t in self._tasks if not t.done()]
        self._tasks.append(asyncio.ensure_future(coro))

    def watch(self, pc: RTCPeerConnection, connect_timeout_s: float) -> None:
        """End the session when its client goes away: the peer fails (ICE consent expired,
        RFC 7675: a client that vanished without DELETE) or closes, or it never connects
        within ``connect_timeout_s`` (an offer whose client never completes ICE)."""

        @pc.on("connectionstatechange")
        async def _changed() -> None:
            log.info("session %s: connection %s", self.label, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                await self.close()

        async def _deadline() -> None:
            await asyncio.sleep(connect_timeout_s)
            if pc.connectionState != "connected" and not self.closed:
                log.info("session %s: not connected after %.0f s, closing", self.label, connect_timeout_s)
                await self.close()

        self._spawn(_deadline())

    def add_player(self, player_id: str, pc: RTCPeerConnection, connect_timeout_s: float) -> None:
        """A WHEP player: removed when its peer fails or closes, or never connects in time,
        so players that never connect cannot hold the player slots."""
        self.viewers[player_id] = pc

        @pc.on("connectionstatechange")
        async def _changed() -> None:
            if pc.connectionState in ("failed", "closed"):
                await self.close_viewer(player_id)

        async def _deadline() -> None:
            await asyncio.sleep(connect_timeout_s)
            if pc.connectionState != "connected" and self.viewers.get(player_id) is pc:
                log.info("session %s: a player did not connect in %.0f s", self.label, connect_timeout_s)
                await self.close_viewer(player_id)

        self._spawn(_deadline())

    async def close_viewer(self, viewer_id: str) -> bool:
        pc = self.viewers.pop(viewer_id, None)
        if pc is None:
            return False
        await close_peer(pc)
        return True

    async def close(self) -> None:
        """End the session and release everything it holds (peers, tasks, the tracker graph,
        the worker thread). Idempotent, and safe to call from the session's own tasks (a
        deadline or a reader): the teardown runs in a task of its own, so cancelling the
        caller cannot interrupt it."""
        if self._close_task is None:
            self.closed = True
            self._close_task = asyncio.ensure_future(self._teardown())
        await asyncio.shield(self._close_task)

    async def _teardown(self) -> None:
        try:
            self.bus.close()
            self._new_frame.set()
            for task in self._tasks:
                task.cancel()
            for viewer_id in list(self.viewers):
                with contextlib.suppress(Exception):
                    await self.close_viewer(viewer_id)
            if self.pc is not None:
                with contextlib.suppress(Exception):
                    await close_peer(self.pc)
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=5.0)
            # after the frame in flight (if any), in the thread that ran the pipeline
            loop = asyncio.get_running_loop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(loop.run_in_executor(self._executor, _release, self._anim), 10.0)
        finally:
            self._tasks.clear()
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._on_closed(self)
            log.info("session %s closed", self.label)
            # A session frees tens of MB in many small native blocks (tracker graphs, codec
            # contexts); hand them back so RSS tracks what is live, not the high-water mark.
            trim_native_heap()


def _release(anim: object) -> None:
    """Close a pipeline session (its tracker graph and threads); a broken one is only logged."""
    try:
        anim.close()  # type: ignore[attr-defined]
    except Exception:
        log.exception("releasing a pipeline session failed")
