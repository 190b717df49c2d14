"""The live avatar server: aiohttp application, WebRTC endpoints, limits and config.

Endpoints
---------
GET  /                          the page (upload a source, camera, sliders, stats)
GET  /view/<viewer>             one session's avatar alone, full-window (an OBS Browser Source),
                                played over POST /whep/<viewer>; ?clean=1 hides the URL box
POST /offer                     the page's offer/answer (JSON {sdp, type}) -> {sdp, type, session,
                                viewer, whep}
POST /whip                      WHIP ingest (RFC 9725): application/sdp offer -> 201 + answer,
                                Location: /whip/<session>, Link: </whep/<viewer>>; rel="whep"
DELETE /whip/<session>          end that session (also DELETE /session/<session>)
POST /whep/<viewer>             WHEP playback of that session's avatar -> 201 + answer,
                                Location: /whep/<viewer>/<player>
DELETE /whep/<viewer>/<player>  end that playback
POST /session/<session>/control JSON {"edits": {...}, "strengths": {...}, "recalibrate": true}
POST /session/<session>/source  a new source portrait (image bytes or multipart field "image")
GET  /session/<session>/stats   one session's stats
GET  /stats                     counts and timings; every session's details with the admin token

Capabilities: ``<session>`` is the owner's secret (192 random bits) for DELETE, PATCH,
control, source and its stats; it is also accepted as ``Authorization: Bearer <session>`` on
``/session/control``, ``/session/source``, ``/session/stats`` and ``DELETE /session``.
``<viewer>`` is a separate secret that grants playback only. ``--token`` (optional) must come
as ``Authorization: Bearer`` on ``POST /whip`` and ``POST /offer`` and is the admin token.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import io
import ipaddress
import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiohttp.http_exceptions
import numpy as np
from aiohttp import BodyPartReader, web
from aiohttp.abc import AbstractAccessLogger
from aiortc import RTCPeerConnection, RTCSessionDescription

from rt_portrait.generator import Generator
from rt_portrait.generator.colour import CHROMA_CLAMP
from rt_portrait.generator.select import (
    STILL_SIGMA,
    add_generator_arguments,
    build_generator,
    generator_options,
)
from rt_portrait.generator.texture import TEXTURE_GAIN
from rt_portrait.head.types import REFERENCES, RetargetConfig
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.server.memory import ALLOCATORS, Allocator, loaded_allocator, tune_malloc, use_allocator
from rt_portrait.server.session import (
    ControlError,
    Session,
    SessionLimits,
    close_peer,
    keep_loopback_candidates,
    loopback_ice,
    new_peer_connection,
)

log = logging.getLogger(__name__)
STATIC_DIR = Path(__file__).parent / "static"


@dataclass
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    source: str | None = None  # portrait for WHIP sessions and the page's default; None = embedded
    size: int = 256  # working resolution of the pipeline
    output_size: int | None = None  # long side of the streamed avatar; None = the working size
    max_sessions: int = 4
    max_viewers_per_session: int = 4
    max_upload_bytes: int = 10 * 1024 * 1024
    max_image_side: int = 4096
    max_sdp_bytes: int = 64 * 1024
    fps: float = 30.0  # frame budget used for degradation
    min_size: int = 128  # degradation floor of the working size
    ice_loopback_only: bool = False  # gather and accept only 127.0.0.1 candidates (tests)
    negotiate_timeout_s: float = 15.0
    connect_timeout_s: float = 30.0  # a session that never connects is reclaimed
    echo: bool = False  # transport baseline: send the driver back unprocessed
    probe_rows: int = 0  # copy the driver's top rows onto the output (latency probes)
    token: str | None = None  # Bearer needed on POST /whip and /offer; also the admin token
    max_sessions_per_minute: int = 30  # new sessions per client address (0: no limit)
    allocator: Allocator = "auto"  # jemalloc when installed (flat RSS over hours), else glibc
    malloc_arenas: int = 2  # glibc malloc arenas for the process (0: glibc's default, 8 per core)
    malloc_mmap_threshold_kb: int = 0  # fixed glibc mmap threshold (0: glibc's dynamic one); see tune_malloc
    # generator options (AnimatorConfig's): "auto", "diffusion" or "warp", steps, fusion weights
    generator: str = "auto"
    steps: int = 1
    motion_weight: float = 1.0
    identity_weight: float = 1.0
    detail: float = 0.0
    texture_gain: float = TEXTURE_GAIN
    source_detail: float | None = None  # AnimatorConfig.source_detail
    still_sigma: float | None = STILL_SIGMA  # AnimatorConfig.still_sigma
    chroma_clamp: float = CHROMA_CLAMP  # AnimatorConfig.chroma_clamp
    frame_detail: bool = True
    generator_weights: str | None = None
    mouth: str = "teeth"  # the warp fill's mouth style (AnimatorConfig.mouth)
    shell: str = "auto"  # the head shell (AnimatorConfig.shell)
    fringe: bool | None = None  # AnimatorConfig.fringe
    background_seen: bool | None = None  # AnimatorConfig.background_seen
    backend: str = "auto"  # the diffusion network's engine (rt_portrait.engines), resolved once
    # the driver's neutral (RetargetConfig.reference): a stream starts wherever the caller is
    # when it connects, so the median face of its first two seconds, not its first frame
    reference: str = "median"


class BadInput(web.HTTPException):
    """A 4xx/5xx with a JSON body that names the problem."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self.status_code = status
        self.message = message
        super().__init__(
            text=json.dumps({"error": message}), content_type="application/json", headers=headers
        )

    def __str__(self) -> str:
        return f"{self.status_code}: {self.message}"


# ---------------------------------------------------------------------------------------
# Portrait loading
# ---------------------------------------------------------------------------------------
def decode_portrait(data: bytes, max_side: int) -> np.ndarray:
    """Bytes of an image file -> (H, W, 3) uint8 RGB, checking the dimensions before decoding."""
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise BadInput(400, "empty upload: send an image file (JPEG, PNG, WebP...)")
    try:
        # Image.open reads the header only; it refuses headers that claim a decompression
        # bomb (over 2 x Image.MAX_IMAGE_PIXELS) itself, before anything is decoded.
        img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:
        raise BadInput(413, f"image dimensions are far beyond the limit of {max_side} px per side") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError):
        raise BadInput(
            415, "the upload is not an image this server can read (JPEG, PNG, WebP, BMP...)"
        ) from None
    with img:
        w, h = img.size
        if w > max_side or h > max_side:
            raise BadInput(413, f"image is {w}x{h}; the limit is {max_side} px per side")
        if w < 32 or h < 32:
            raise BadInput(422, f"image is {w}x{h}; too small for a portrait (at least 32x32)")
        try:
            rgb = np.array(img.convert("RGB"))  # a writable copy (torch warns on read-only arrays)
        except Exception as exc:  # a hostile file can make any decoder raise anything
            raise BadInput(415, f"could not decode the image: {type(exc).__name__}: {exc}"[:300]) from None
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise BadInput(415, f"could not decode the image to RGB (got {rgb.dtype} {rgb.shape})")
    return np.ascontiguousarray(rgb)


def load_source_file(path: str, max_side: int) -> np.ndarray:
    p = Path(path)
    if not p.is_file():
        raise SystemExit(f"--source {path!r}: no such file")
    try:
        return decode_portrait(p.read_bytes(), max_side)
    except BadInput as exc:
        raise SystemExit(f"--source {path!r}: {exc.message}") from None


# ---------------------------------------------------------------------------------------
# State
# ---------------------------------------------------------------------------------------
class ServerState:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.sessions: dict[str, Session] = {}  # by the owner's capability
        self._by_viewer: dict[str, Session] = {}  # by the playback capability
        self._created: dict[str, deque[float]] = {}  # client address -> recent session starts
        self.default_animator: Animator | None = None
        self.portrait_jpeg: bytes | None = None  # the default portrait for the page's preview
        self._generator: Generator | None = None
        # Source analysis (face tracking of an upload) is CPU work: keep it off the loop and
        # off the sessions' own executors.
        self.build_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="source-build")
        self.limits = SessionLimits(
            fps=config.fps,
            min_size=min(config.min_size, config.size),
            probe_rows=config.probe_rows,
            echo=config.echo,
            max_viewers=config.max_viewers_per_session,
        )

    def animator_config(self) -> AnimatorConfig:
        c = self.config
        return AnimatorConfig(
            size=c.size,
            retarget=RetargetConfig(reference=c.reference),
            max_output_side=c.output_size or c.size,
            generator=c.generator,
            steps=c.steps,
            motion_weight=c.motion_weight,
            identity_weight=c.identity_weight,
            detail=c.detail,
            texture_gain=c.texture_gain,
            source_detail=c.source_detail,
            still_sigma=c.still_sigma,
            chroma_clamp=c.chroma_clamp,
            frame_detail=c.frame_detail,
            generator_weights=c.generator_weights,
            mouth=c.mouth,
            shell=c.shell,
            fringe=c.fringe,
            background_seen=c.background_seen,
            backend=c.backend,
        )

    @property
    def generator(self) -> Generator:
        """One generator (one set of weights) shared by every portrait's animator."""
        if self._generator is None:
            self._generator = build_generator(self.animator_config().generator_spec())
        return self._generator

    def backend_summary(self) -> dict[str, object] | None:
        """The generator network's backend and why (None before the generator is built, or
        for the warp fill)."""
        if self._generator is None:
            return None
        from rt_portrait.engines.generator import backend_summary

        return backend_summary(self._generator)

    async def build_animator(self, image: np.ndarray, name: str) -> Animator:
        loop = asyncio.get_running_loop()

        def build() -> Animator:
            animator = Animator(image, self.animator_config(), name=name, generator=self.generator)
            animator.prepare()  # the scene and the still source's change, off the frame path
            return animator

        return await loop.run_in_executor(self.build_executor, build)

    def _forget(self, session: Session) -> None:
        self.sessions.pop(session.id, None)
        self._by_viewer.pop(session.viewer_id, None)

    def admit(self, address: str) -> None:
        """Count one new session for ``address``: 429 beyond the per-minute limit."""
        limit = self.config.max_sessions_per_minute
        if limit <= 0:
            return
        now = time.monotonic()
        if len(self._created) > 4096:  # bounded: forget addresses idle for a minute
            for addr in [a for a, q in self._created.items() if not q or q[-1] <= now - 60]:
                del self._created[addr]
        stamps = self._created.setdefault(address, deque())
        while stamps and stamps[0] <= now - 60:
            stamps.popleft()
        if len(stamps) >= limit:
            retry = max(1, int(stamps[0] + 60 - now) + 1)
            raise BadInput(
                429,
                f"too many new sessions: at most {limit} per minute per address",
                {"Retry-After": str(retry)},
            )
        stamps.append(now)

    def new_session(self, kind: str) -> Session:
        if len(self.sessions) >= self.config.max_sessions:
            raise BadInput(
                503, f"server is full: {self.config.max_sessions} sessions at once", {"Retry-After": "5"}
            )
        assert self.default_animator is not None
        session = Session(kind, self.default_animator, self.limits, on_closed=self._forget)
        self.sessions[session.id] = session
        self._by_viewer[session.viewer_id] = session
        return session

    def session_for_owner(self, token: str | None) -> Session | None:
        """The live session whose owner capability is ``token``, or None."""
        return self.sessions.get(token) if token else None

    def session_for_viewer(self, viewer_token: str | None) -> Session | None:
        """The live session whose playback capability is ``viewer_token``, or None. Playback
        only: never hand the result's owner capability (``session.id``) to the caller."""
        return self._by_viewer.get(viewer_token) if viewer_token else None

    def is_admin(self, request: web.Request) -> bool:
        """Whether the request carries the server's token (never true without --token)."""
        token, given = self.config.token, bearer_token(request)
        return token is not None and given is not None and hmac.compare_digest(given.encode(), token.encode())

    def require_token(self, request: web.Request) -> None:
        """POST /whip and /offer: with --token set, the Bearer token must match it."""
        if self.config.token is not None and not self.is_admin(request):
            raise BadInput(
                401,
                "this server needs its token: send Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="rt-portrait"'},
            )


def bearer_token(request: web.Request) -> str | None:
    scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
    credentials = credentials.strip()
    return credentials if scheme.lower() == "bearer" and credentials else None


def owned_session(request: web.Request) -> Session:
    """The session named by the owner capability in the path, or (routes without one) in an
    ``Authorization: Bearer`` header. 404 for anything else: nothing says whether it existed."""
    state = request.app[STATE]
    token = request.match_info.get("session") or bearer_token(request)
    session = state.session_for_owner(token)
    if session is None:
        raise BadInput(404, "no such session (it ended, or the URL or token is wrong)")
    return session


STATE = web.AppKey("rt_portrait_state", ServerState)


# ---------------------------------------------------------------------------------------
# SDP handling
# ---------------------------------------------------------------------------------------
# aiortc verifies the peer's DTLS certificate against these digests only
_FINGERPRINT = re.compile(
    r"a=fingerprint:(sha-256|sha-384|sha-512) [0-9a-f]{2}(:[0-9a-f]{2}){31,63}\s*", re.I
)
_HOSTNAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}\.)*[A-Za-z0-9-]{1,63}")
MAX_MEDIA_SECTIONS = 8
MAX_CANDIDATES = 32  # each remote candidate makes the server send STUN checks to it


def _check_candidate(line: str) -> None:
    """One ``a=candidate:`` line, checked as aioice/aiortc will parse it, so that nothing
    malformed reaches ICE (a port over 65535 raised OverflowError in the background)."""
    bits = line[len("a=candidate:") :].split()
    try:
        if len(bits) < 8 or bits[6].lower() != "typ":
            raise ValueError(
                "expected '<foundation> <component> <transport> <priority> <address> <port> typ <type>'"
            )
        component, priority, port = int(bits[1]), int(bits[3]), int(bits[5])
        if not 1 <= component <= 256 or not 0 <= priority < 2**32 or not 0 <= port <= 65535:
            raise ValueError("component, priority or port out of range")
        if bits[2].lower() not in ("udp", "tcp"):
            raise ValueError(f"transport {bits[2]!r} is not udp or tcp")
        host = bits[4]
        try:
            ipaddress.ip_address(host)
        except ValueError:
            if len(host) > 253 or not _HOSTNAME.fullmatch(host):
                raise ValueError(f"address {host[:64]!r} is neither an IP address nor a host name") from None
        for key, value in zip(bits[8::2], bits[9::2], strict=False):
            if key in ("rport", "generation", "network-id", "network-cost") and not (
                value.isdigit() and int(value) <= (65535 if key == "rport" else 2**32)
            ):
                raise ValueError(f"{key} {value[:32]!r} out of range")
    except ValueError as exc:
        raise BadInput(400, f"bad ICE candidate {line[:120]!r}: {exc}") from None


def check_sdp(text: str, max_bytes: int) -> str:
    """Structural checks that aiortc would otherwise fail on later, in the background."""
    if len(text.encode("utf-8", "replace")) > max_bytes:
        raise BadInput(413, f"SDP offer is larger than {max_bytes} bytes")
    if "\x00" in text:
        raise BadInput(400, "the SDP offer contains a NUL character")
    if not text.lstrip().startswith("v=0"):
        raise BadInput(400, "not an SDP offer: it must start with 'v=0'")
    lines = [ln.strip() for ln in text.replace("\r\n", "\n").split("\n")]
    media = [ln for ln in lines if ln.startswith("m=")]
    if not any(ln.startswith("m=video") for ln in media):
        raise BadInput(400, "the SDP offer has no video m-line")
    if len(media) > MAX_MEDIA_SECTIONS:
        raise BadInput(400, f"the SDP offer has {len(media)} media sections; at most {MAX_MEDIA_SECTIONS}")
    if not any(_FINGERPRINT.fullmatch(ln) for ln in lines):
        raise BadInput(
            400, "the SDP offer has no usable a=fingerprint (sha-256, sha-384 or sha-512): DTLS cannot start"
        )
    # every media section names itself once (a=mid), and a BUNDLE group names only those:
    # aiortc leaves sections without a transport otherwise, and fails later in the background
    mids: list[str] = []
    for section in "\n".join(lines).split("\nm=")[1:]:
        found = [ln[len("a=mid:") :] for ln in section.split("\n") if ln.startswith("a=mid:")]
        if len(found) != 1 or not found[0]:
            raise BadInput(400, "every media section of the SDP offer needs exactly one a=mid")
        mids.append(found[0])
    if len(set(mids)) != len(mids):
        raise BadInput(400, "the SDP offer repeats an a=mid")
    for ln in lines:
        if ln.startswith("a=group:BUNDLE") and not set(ln.split()[1:]) <= set(mids):
            raise BadInput(400, "the SDP offer's BUNDLE group names a media section it does not have")
    if not any(ln.startswith("a=ice-ufrag:") for ln in lines) or not any(
        ln.startswith("a=ice-pwd:") for ln in lines
    ):
        raise BadInput(400, "the SDP offer has no a=ice-ufrag / a=ice-pwd")
    candidates = [ln for ln in lines if ln.startswith("a=candidate:")]
    if len(candidates) > MAX_CANDIDATES:
        raise BadInput(400, f"the SDP offer has {len(candidates)} ICE candidates; at most {MAX_CANDIDATES}")
    for line in candidates:
        _check_candidate(line)
    return text


async def read_body(request: web.Request, limit: int, what: str, timeout_s: float = 30.0) -> bytes:
    """The whole request body, at most ``limit`` bytes: 413 beyond it, whether announced by
    Content-Length or found while reading (chunked bodies), 408 for a body that stalls."""
    if request.content_length is not None and request.content_length > limit:
        raise BadInput(413, f"{what} is larger than {limit} bytes")
    data = bytearray()
    try:
        async with asyncio.timeout(timeout_s):
            while chunk := await request.content.read(64 * 1024):  # b"" at the end of the body
                data += chunk
                if len(data) > limit:
                    raise BadInput(413, f"{what} is larger than {limit} bytes")
    except TimeoutError:
        raise BadInput(408, f"{what} did not arrive within {timeout_s:.0f} s") from None
    except (aiohttp.ClientPayloadError, aiohttp.http_exceptions.HttpProcessingError, ConnectionError) as exc:
        raise BadInput(400, f"{what} is incomplete or malformed: {type(exc).__name__}") from None
    return bytes(data)


def _no_constants(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def parse_json(raw: bytes, what: str) -> object:
    """JSON without NaN/Infinity; nesting, huge numbers and bad UTF-8 are 400s, not 500s."""
    try:
        return json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except RecursionError:
        raise BadInput(400, f"{what} is nested too deeply") from None
    except UnicodeDecodeError:
        raise BadInput(400, f"{what} is not valid UTF-8") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, integers over Python's digit limit
        raise BadInput(400, f"{what} is not valid JSON: {str(exc)[:200]}") from None


def expect_within(limit: int) -> Callable[[web.Request], Awaitable[web.StreamResponse | None]]:
    """``Expect: 100-continue`` handler: refuse an announced body over ``limit`` with 413
    before the client sends it (instead of inviting 50 MB and dropping the connection)."""

    async def handler(request: web.Request) -> web.StreamResponse | None:
        expect = request.headers.get("Expect", "")
        if expect.lower() != "100-continue":
            return web.json_response({"error": f"unsupported Expect: {expect[:64]!r}"}, status=417)
        if request.content_length is not None and request.content_length > limit:
            return web.json_response({"error": f"request body is larger than {limit} bytes"}, status=413)
        if request.version >= (1, 1):
            try:
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            except ConnectionError:  # the client left before its body: nothing more to say
                raise web.HTTPBadRequest(text="connection closed before the body") from None
            request.writer.output_size = 0
        return None

    return handler


async def read_sdp_body(request: web.Request, max_bytes: int) -> str:
    if request.content_type != "application/sdp":
        raise BadInput(
            415, f"expected Content-Type application/sdp, got {request.content_type[:64] or 'none'!r}"
        )
    raw = await read_body(request, max_bytes, "SDP offer")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadInput(400, "SDP offer is not valid UTF-8") from None
    return check_sdp(text, max_bytes)


async def negotiate(
    state: ServerState, offer: str, setup: Callable[[RTCPeerConnection], None], need: str, player: Any = None
) -> RTCPeerConnection:
    """Apply a remote offer and produce a complete (non-trickle) answer.

    ``need``: "recv" when the server ingests the client's video (the offer must send video),
    "send" when it plays ``player`` to the client (the offer must receive video)."""
    cfg = state.config
    pc = new_peer_connection()
    try:
        with loopback_ice(cfg.ice_loopback_only):
            if cfg.ice_loopback_only:
                offer = keep_loopback_candidates(offer)
            setup(pc)
            async with asyncio.timeout(cfg.negotiate_timeout_s):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
                # A BUNDLE group led by an unknown mid leaves the bundled sections without a
                # transport; aiortc then fails later, in the background (found by fuzzing).
                if any(t.receiver.transport is None for t in pc.getTransceivers()) or (
                    pc.sctp is not None and pc.sctp.transport is None
                ):
                    raise BadInput(
                        400, "the SDP offer's BUNDLE group does not start with one of its media sections"
                    )
                # aiortc stores the offered direction from the server's side (reversed)
                offered = {t._offerDirection for t in pc.getTransceivers() if t.kind == "video"}
                wanted = {"recvonly", "sendrecv"} if need == "recv" else {"sendonly", "sendrecv"}
                if not offered & wanted:
                    raise BadInput(
                        400, f"the SDP offer does not {'send' if need == 'recv' else 'receive'} video"
                    )
                if player is not None:
                    pc.addTrack(player)
                answer = await pc.createAnswer()
                await pc.setLocalDescription(answer)
        return pc
    except BadInput:
        await close_peer(pc)
        raise
    except TimeoutError:
        await close_peer(pc)
        raise BadInput(504, "negotiation timed out") from None
    except Exception as exc:
        await close_peer(pc)
        log.debug("rejected offer: %s: %s", type(exc).__name__, str(exc)[:200])  # the client is told
        raise BadInput(400, f"could not negotiate the SDP offer: {type(exc).__name__}: {exc}") from None


async def start_session(state: ServerState, kind: str, offer: str, address: str) -> Session:
    """A new ingest session; for the page, the avatar returns on the same transceiver."""
    state.admit(address)
    session = state.new_session(kind)

    def setup(pc: RTCPeerConnection) -> None:
        @pc.on("track")
        def _on_track(track: Any) -> None:
            session.attach_driver(track)
            if kind == "page" and track.kind == "video":
                pc.addTrack(session.new_viewer_track())

    try:
        session.pc = await negotiate(state, offer, setup, need="recv")
    except BaseException:
        await session.close()
        raise
    session.watch(session.pc, state.config.connect_timeout_s)
    return session


# ---------------------------------------------------------------------------------------
# Access log
# ---------------------------------------------------------------------------------------
_CAPABILITY_IN_PATH = re.compile(r"^/(whip|whep|session|view)/([^/]+)(/[^/]+)?")


def redact_path(path: str) -> str:
    """A request path with its capabilities cut to 4 characters: logs must not grant access."""

    def cut(m: re.Match[str]) -> str:
        tail = f"/{m.group(3)[1:5]}…" if m.group(3) and m.group(1) == "whep" else (m.group(3) or "")
        return f"/{m.group(1)}/{m.group(2)[:4]}…{tail}"

    return _CAPABILITY_IN_PATH.sub(cut, path[:200])


class MalformedRequestFilter(logging.Filter):
    """aiohttp answers a malformed request line or header with 400 itself, then logs it at
    ERROR with a traceback: a log flood any client can cause. So does a client that leaves
    while aiohttp answers ``Expect: 100-continue`` on a route without our handler (a 404 or
    405). Those records go to DEBUG: they are the client's doing, not the server's."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, (aiohttp.http_exceptions.HttpProcessingError, ConnectionError)):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_malformed_requests() -> None:
    server_log = logging.getLogger("aiohttp.server")
    if not any(isinstance(f, MalformedRequestFilter) for f in server_log.filters):
        server_log.addFilter(MalformedRequestFilter())


class AccessLogger(AbstractAccessLogger):
    """One line per request, capabilities redacted; stats polls (twice a second per open
    page) at DEBUG."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        path = request.path
        polling = request.method == "GET" and path.endswith("/stats")
        self.logger.log(
            logging.DEBUG if polling else logging.INFO,
            '%s "%s %s" %d %.1f ms',
            request.remote,
            request.method,
            redact_path(path),
            response.status,
            time * 1e3,
        )


# ---------------------------------------------------------------------------------------
# Handlers
# ---------------------------------------------------------------------------------------
def json_error_middleware() -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            return await handler(request)
        except BadInput:
            raise
        except web.HTTPRequestEntityTooLarge as exc:
            return web.json_response({"error": f"request body too large ({exc.reason})"}, status=413)
        except web.HTTPException as exc:
            if exc.status >= 400 and exc.content_type != "application/json":
                return web.json_response(
                    {"error": exc.reason},
                    status=exc.status,
                    headers={k: v for k, v in exc.headers.items() if k == "Allow"},
                )
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, redact_path(request.path))
            return web.json_response({"error": "internal server error"}, status=500)

    return middleware


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def favicon(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "favicon.svg", headers={"Content-Type": "image/svg+xml"})


async def portrait(request: web.Request) -> web.Response:
    """The server's default portrait (the page previews it before Start), JPEG, cached."""
    state = request.app[STATE]
    if state.portrait_jpeg is None:
        from PIL import Image

        assert state.default_animator is not None
        buf = io.BytesIO()
        Image.fromarray(state.default_animator.source).save(buf, format="JPEG", quality=90)
        state.portrait_jpeg = buf.getvalue()
    return web.Response(
        body=state.portrait_jpeg, content_type="image/jpeg", headers={"Cache-Control": "no-cache"}
    )


VIEWER_LINK = re.compile(r"[A-Za-z0-9_-]{1,128}")


async def view_page(request: web.Request) -> web.FileResponse:
    """The bare player page of one session. Served for any well-formed link (the page itself
    waits and retries until that session plays), so it reveals nothing about live sessions."""
    if not VIEWER_LINK.fullmatch(request.match_info["viewer"]):
        raise BadInput(404, "not a playback link: expected /view/<viewer>")
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}  # the URL is a secret
    return web.FileResponse(STATIC_DIR / "view.html", headers=headers)


async def post_offer(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.require_token(request)
    if request.content_type != "application/json":
        raise BadInput(415, "expected Content-Type application/json with {sdp, type}")
    body = parse_json(await read_body(request, 2 * state.config.max_sdp_bytes, "offer"), "offer")
    if not isinstance(body, dict) or body.get("type") != "offer" or not isinstance(body.get("sdp"), str):
        raise BadInput(400, 'expected {"type": "offer", "sdp": "v=0..."}')
    offer = check_sdp(body["sdp"], state.config.max_sdp_bytes)
    session = await start_session(state, "page", offer, request.remote or "")
    assert session.pc is not None
    answer = session.pc.localDescription.sdp
    return web.json_response(
        {
            "sdp": answer,
            "type": "answer",
            "session": session.id,
            "location": f"/session/{session.id}",
            "viewer": session.viewer_id,
            "whep": f"/whep/{session.viewer_id}",
        }
    )


async def post_whip(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.require_token(request)
    offer = await read_sdp_body(request, state.config.max_sdp_bytes)
    session = await start_session(state, "whip", offer, request.remote or "")
    assert session.pc is not None
    answer = session.pc.localDescription.sdp
    return web.Response(
        status=201,
        text=answer,
        content_type="application/sdp",
        headers={
            "Location": f"/whip/{session.id}",
            "Link": f'</whep/{session.viewer_id}>; rel="whep"',
            "ETag": f'"{session.label}"',
        },
    )


async def options_whip(request: web.Request) -> web.Response:
    return web.Response(status=204, headers={"Accept-Post": "application/sdp", "Allow": "OPTIONS, POST"})


async def delete_session(request: web.Request) -> web.Response:
    session = owned_session(request)
    await session.close()
    return web.Response(status=200, text="session ended\n")


async def patch_whip(request: web.Request) -> web.Response:
    owned_session(request)
    # aiortc gathers every candidate before answering: there is nothing to trickle.
    raise BadInput(
        405,
        "trickle ICE and ICE restarts are not supported; candidates are in the answer",
        {"Allow": "DELETE"},
    )


async def post_whep(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = state.session_for_viewer(request.match_info["viewer"])
    if session is None:
        raise BadInput(404, "no such session to play (it ended, or the URL is wrong)")
    offer = await read_sdp_body(request, state.config.max_sdp_bytes)
    if len(session.viewers) >= state.config.max_viewers_per_session:
        raise BadInput(
            503, f"session already has {state.config.max_viewers_per_session} players", {"Retry-After": "5"}
        )
    track = session.new_viewer_track()
    pc = await negotiate(state, offer, lambda pc: None, need="send", player=track)
    player_id = secrets.token_urlsafe(16)
    if session.closed:
        await close_peer(pc)
        raise BadInput(404, "session ended during negotiation")
    session.add_player(player_id, pc, state.config.connect_timeout_s)
    location = f"/whep/{session.viewer_id}/{player_id}"
    return web.Response(
        status=201,
        text=pc.localDescription.sdp,
        content_type="application/sdp",
        headers={"Location": location},
    )


async def delete_whep(request: web.Request) -> web.Response:
    session = request.app[STATE].session_for_viewer(request.match_info["viewer"])
    if session is None or not await session.close_viewer(request.match_info["player"]):
        raise BadInput(404, "no such player (it ended, or the URL is wrong)")
    return web.Response(status=200, text="playback ended\n")


MAX_CONTROL_BYTES = 16 * 1024


async def post_control(request: web.Request) -> web.Response:
    session = owned_session(request)
    payload = parse_json(await read_body(request, MAX_CONTROL_BYTES, "control body"), "control body")
    try:
        session.set_controls(payload)
    except ControlError as exc:
        raise BadInput(400, str(exc)) from None
    return web.json_response(session.controls())


async def read_multipart_image(request: web.Request, limit: int) -> tuple[str, bytes]:
    """The part named "image" of a multipart upload: (file stem, bytes). A malformed body
    (no boundary, an overlong one, no opening or closing delimiter, bad part headers) is a
    400 naming the problem: aiohttp's reader raises many exception types for those."""
    try:
        async with asyncio.timeout(30.0):
            reader = await request.multipart()
            total = 0
            while True:
                part = await reader.next()
                if part is None:
                    raise BadInput(400, "multipart upload has no field named 'image'")
                if not isinstance(part, BodyPartReader):
                    raise BadInput(400, "multipart upload: nested multipart parts are not supported")
                data = bytearray()
                while chunk := await part.read_chunk(64 * 1024):
                    data += chunk
                    total += len(chunk)
                    if total > limit:
                        raise BadInput(413, f"upload is larger than {limit} bytes")
                if part.name == "image":
                    return Path(part.filename or "upload").stem[:64] or "upload", bytes(data)
    except (BadInput, web.HTTPException):
        raise
    except TimeoutError:
        raise BadInput(408, "the upload did not arrive within 30 s") from None
    except Exception as exc:  # the body is the client's: its malformations are its errors
        raise BadInput(400, f"malformed multipart upload: {type(exc).__name__}: {str(exc)[:160]}") from None


async def post_source(request: web.Request) -> web.Response:
    state = request.app[STATE]
    session = owned_session(request)
    limit = state.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit + 64 * 1024:
        raise BadInput(413, f"upload is larger than {limit} bytes")
    if request.content_type.startswith("multipart/"):
        name, raw = await read_multipart_image(request, limit)
    else:
        name, raw = "upload", await read_body(request, limit, "upload")
    loop = asyncio.get_running_loop()  # decoding a large image is CPU work: off the event loop
    image = await loop.run_in_executor(
        state.build_executor, decode_portrait, raw, state.config.max_image_side
    )
    try:
        animator = await state.build_animator(image, name)
    except ValueError as exc:
        raise BadInput(422, f"no usable face in the uploaded portrait: {exc}") from None
    if session.closed:
        raise BadInput(404, "session ended during the upload")
    session.set_animator(animator)
    return web.json_response({"source": name, "width": int(image.shape[1]), "height": int(image.shape[0])})


async def get_session_stats(request: web.Request) -> web.Response:
    return web.json_response(owned_session(request).snapshot())


async def get_stats(request: web.Request) -> web.Response:
    """Anonymous: counts and timings only. With the admin token: every session's details,
    capabilities included."""
    state = request.app[STATE]
    admin = state.is_admin(request)
    if bearer_token(request) is not None and not admin:
        raise BadInput(
            401, "wrong token for the server-wide view", {"WWW-Authenticate": 'Bearer realm="rt-portrait"'}
        )
    cfg = state.config
    sessions = list(state.sessions.values())
    return web.json_response(
        {
            "view": "admin" if admin else "public",
            "active": len(sessions),
            "viewers": sum(len(s.viewers) for s in sessions),
            "sessions": [s.snapshot(private=admin) for s in sessions],
            "max_sessions": cfg.max_sessions,
            "size": cfg.size,
            "fps": cfg.fps,
            "echo": cfg.echo,
            "generator_backend": state.backend_summary(),
            **({"allocator": loaded_allocator()} if admin else {}),
        }
    )


# ---------------------------------------------------------------------------------------
# Application
# ---------------------------------------------------------------------------------------
def build_app(config: ServerConfig) -> web.Application:
    # client_max_size bounds every body read through aiohttp's helpers (multipart included).
    app = web.Application(
        client_max_size=config.max_upload_bytes + 64 * 1024, middlewares=[json_error_middleware()]
    )
    state = ServerState(config)
    app[STATE] = state
    quiet_malformed_requests()

    async def startup(app: web.Application) -> None:
        if config.source is None:
            from rt_portrait.core.assets import default_portrait

            image, name = default_portrait(), "astronaut"
        else:
            image, name = load_source_file(config.source, config.max_image_side), Path(config.source).stem
        try:
            state.default_animator = await state.build_animator(image, name)
        except ValueError as exc:
            raise SystemExit(f"source portrait {name!r} is unusable: {exc}") from None

    async def shutdown(app: web.Application) -> None:
        # SIGTERM/SIGINT: every session (its peers, players and pipeline) closes at once,
        # bounded, so clients see the end within seconds rather than an ICE timeout.
        closing = [asyncio.ensure_future(s.close()) for s in list(state.sessions.values())]
        if closing:
            done, pending = await asyncio.wait(closing, timeout=4.0)
            log.info("shutdown: %d sessions closed, %d still closing", len(done), len(pending))
        state.build_executor.shutdown(wait=False, cancel_futures=True)

    app.on_startup.append(startup)
    app.on_shutdown.append(shutdown)
    app.router.add_get("/", index)
    app.router.add_get("/favicon.ico", favicon)
    app.router.add_get("/portrait", portrait)
    app.router.add_get("/view/{viewer}", view_page)
    app.router.add_static("/static/", STATIC_DIR)
    sdp_limit = config.max_sdp_bytes
    upload_limit = config.max_upload_bytes + 64 * 1024
    app.router.add_post("/offer", post_offer, expect_handler=expect_within(2 * sdp_limit))
    app.router.add_post("/whip", post_whip, expect_handler=expect_within(sdp_limit))
    app.router.add_route("OPTIONS", "/whip", options_whip)
    app.router.add_delete("/whip/{session}", delete_session)
    app.router.add_patch("/whip/{session}", patch_whip, expect_handler=expect_within(sdp_limit))
    app.router.add_delete("/session/{session}", delete_session)
    app.router.add_post("/whep/{viewer}", post_whep, expect_handler=expect_within(sdp_limit))
    app.router.add_delete("/whep/{viewer}/{player}", delete_whep)
    app.router.add_post(
        "/session/{session}/control", post_control, expect_handler=expect_within(MAX_CONTROL_BYTES)
    )
    app.router.add_post("/session/{session}/source", post_source, expect_handler=expect_within(upload_limit))
    app.router.add_get("/session/{session}/stats", get_session_stats)
    # the owner capability as a Bearer token instead of in the path
    app.router.add_delete("/session", delete_session)
    app.router.add_post("/session/control", post_control, expect_handler=expect_within(MAX_CONTROL_BYTES))
    app.router.add_post("/session/source", post_source, expect_handler=expect_within(upload_limit))
    app.router.add_get("/session/stats", get_session_stats)
    app.router.add_get("/stats", get_stats)
    return app


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = ServerConfig()
    parser.add_argument(
        "--source", default=None, help="source portrait image (default: the embedded portrait)"
    )
    parser.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    parser.add_argument("--port", type=int, default=d.port, help=f"port (default {d.port})")
    parser.add_argument("--size", type=int, default=d.size, help=f"working resolution (default {d.size})")
    parser.add_argument(
        "--output-size",
        type=int,
        default=None,
        help="long side of the streamed avatar (default: the working size)",
    )
    parser.add_argument("--fps", type=float, default=d.fps, help="frame budget for degradation (default 30)")
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=d.max_sessions,
        help=f"sessions at once (default {d.max_sessions}); without --threads, the cores but one "
        "(the media transport's) are shared among them, at least 1 each",
    )
    parser.add_argument(
        "--max-viewers",
        type=int,
        default=d.max_viewers_per_session,
        help=f"WHEP players per session (default {d.max_viewers_per_session})",
    )
    parser.add_argument(
        "--max-upload-mb",
        type=float,
        default=d.max_upload_bytes / 2**20,
        help=f"largest source upload in MiB (default {d.max_upload_bytes / 2**20:g})",
    )
    parser.add_argument(
        "--max-image-side",
        type=int,
        default=d.max_image_side,
        help=f"largest side of an uploaded portrait in px (default {d.max_image_side})",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="server secret: required as 'Authorization: Bearer <token>' on POST /whip and /offer "
        "(what OBS's WHIP output sends), and the admin token for the full GET /stats",
    )
    parser.add_argument(
        "--max-sessions-per-minute",
        type=int,
        default=d.max_sessions_per_minute,
        help=f"new sessions per client address per minute, 0 = no limit (default {d.max_sessions_per_minute})",
    )
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default=d.allocator,
        help="native allocator: auto = jemalloc when libjemalloc2 is installed (the server "
        "re-executes itself with it preloaded; RSS stays flat over hours), else glibc; "
        f"jemalloc = fail without it; glibc = never switch (default {d.allocator})",
    )
    parser.add_argument(
        "--malloc-arenas",
        type=int,
        default=d.malloc_arenas,
        help="glibc only: cap its malloc arenas so RSS stays flatter as sessions come and go; 0 = glibc's "
        f"default; the MALLOC_ARENA_MAX variable wins when set (default {d.malloc_arenas})",
    )
    parser.add_argument(
        "--malloc-mmap-threshold-kb",
        type=int,
        default=d.malloc_mmap_threshold_kb,
        help="glibc only: fix its mmap threshold (e.g. 128): flattest RSS over hours, but each frame pays "
        "page faults (measured 35-50 %% slower); 0 = glibc's dynamic threshold; "
        "MALLOC_MMAP_THRESHOLD_ wins when set (default 0)",
    )
    parser.add_argument(
        "--ice-loopback-only", action="store_true", help="offer and accept only 127.0.0.1 ICE candidates"
    )
    parser.add_argument(
        "--echo", action="store_true", help="send the driver back unprocessed (transport baseline)"
    )
    parser.add_argument(
        "--reference",
        choices=list(REFERENCES),
        default=d.reference,
        help="the driver's neutral: the median face of a stream's first two seconds (default), its first "
        "frame, or its most frontal frame of the first second; the page's 'recalibrate' restarts it",
    )
    parser.add_argument(
        "--probe-rows",
        type=int,
        default=0,
        help="copy the driver's top rows onto the output (latency probes)",
    )
    add_generator_arguments(parser)


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    return ServerConfig(
        host=args.host,
        port=args.port,
        source=args.source,
        size=args.size,
        output_size=args.output_size,
        fps=args.fps,
        max_sessions=args.max_sessions,
        max_viewers_per_session=args.max_viewers,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_image_side=args.max_image_side,
        ice_loopback_only=args.ice_loopback_only,
        echo=args.echo,
        probe_rows=args.probe_rows,
        reference=args.reference,
        token=args.token or None,
        max_sessions_per_minute=args.max_sessions_per_minute,
        allocator=args.allocator,
        malloc_arenas=args.malloc_arenas,
        malloc_mmap_threshold_kb=args.malloc_mmap_threshold_kb,
        **generator_options(args),
    )


def serve_threads(requested: int | None, max_sessions: int, cores: int) -> int:
    """The server's torch intra-op threads: ``requested``, else the ``cores`` but one shared
    among the session slots (at least 1). Sessions run side by side in threads of their own,
    so with every slot busy none oversubscribes the cores; the core kept back is the media
    transport's (decoding, VP8 encoding, the event loop). Measured live on the 2-core
    development CPU, one 1-step session at 256 driven by a client on the same machine
    (``bench/bench_latency.py --server-args "--generator diffusion --fps 5"``): 13.0-13.3 fps
    with one thread, 9.8-10.6 with two, though the loop alone runs 14 fps with one and 18-21
    with two."""
    if requested is not None:
        return requested
    return max(1, (cores - 1) // max(1, max_sessions))


def run_from_args(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = config_from_args(args)
    use_allocator(config.allocator)  # may replace the process: before any thread or socket
    import torch

    torch.set_num_threads(
        serve_threads(getattr(args, "threads", None), config.max_sessions, torch.get_num_threads())
    )
    tune_malloc(config.malloc_arenas, config.malloc_mmap_threshold_kb)  # process-wide: not in build_app
    log.info("native allocator: %s", loaded_allocator())
    log.info("torch intra-op threads: %d (%d sessions at most)", torch.get_num_threads(), config.max_sessions)
    print(f"rt-portrait server on http://{config.host}:{config.port}/", flush=True)
    web.run_app(
        build_app(config),
        host=config.host,
        port=config.port,
        print=None,
        access_log_class=AccessLogger,
        shutdown_timeout=5.0,  # SIGTERM: requests in flight get this long, then everything closes
    )


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(description="rt-portrait live avatar server")
    add_arguments(_parser)
    run_from_args(_parser.parse_args())
