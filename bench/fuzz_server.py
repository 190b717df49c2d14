"""Fuzz the live server's HTTP endpoints with hypothesis, in process.

The aiohttp app runs in a background thread with its own event loop (as deployed: real
sockets on 127.0.0.1, the real middleware and handlers); hypothesis drives it from the main
thread with ``http.client`` (and raw sockets for lying Content-Lengths). Inputs per endpoint:

* ``whip``, ``whep``: SDP offers, random text and mutations of real aiortc offers;
* ``offer``: JSON bodies (types, NaN/Infinity, depth, size) with random and mutated SDP;
* ``control``: JSON bodies, structured controls with hostile values, raw bytes, deep nesting;
* ``source``: uploads (truncated, decompression bombs, GIF, TIFF, CMYK, 16-bit, 1x1, no face,
  random bytes), raw or multipart with oddities;
* ``session``: methods x session routes with good, wrong and mangled capabilities;
* ``paths``: random paths (traversal, encodings, long URLs) and methods;
* ``length``: lying, negative, duplicated or non-numeric Content-Length, over raw sockets.

Goal: no 5xx, no crash, the server alive and RSS flat. Every 2xx that creates something
(a session, a player) is deleted at once, so capacity never answers 503.

    python bench/fuzz_server.py --examples 10000          # the bench run (about an hour)
    python bench/fuzz_server.py --examples 500 --endpoint control
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import io
import json
import logging
import random
import socket
import struct
import sys
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rt_portrait.server.memory import ALLOCATORS, loaded_allocator, use_allocator

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

ENDPOINTS = ("whip", "whep", "offer", "control", "source", "session", "paths", "length")


# ---------------------------------------------------------------------------------------
# The server under test
# ---------------------------------------------------------------------------------------
@dataclass
class Target:
    """The app in a background event loop, one pc-less session to aim at, real offers."""

    base_host: str = "127.0.0.1"
    port: int = 0
    session: str = ""
    viewer: str = ""
    offers: dict[str, str] = field(default_factory=dict)
    counts: Counter[tuple[str, int]] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    strict: bool = True
    app: Any = None
    _server: Any = None
    _errors: Any = None

    def start(self) -> None:
        from _webrtc_client import ServerThread

        from rt_portrait.server.app import STATE, ServerConfig

        cfg = ServerConfig(
            ice_loopback_only=True,
            connect_timeout_s=2.0,
            negotiate_timeout_s=30.0,  # a starved CPU (nice, other jobs) can stall a negotiation
            max_sessions=8,
            max_viewers_per_session=8,
            max_upload_bytes=2 * 2**20,
            max_image_side=1024,
            max_sdp_bytes=16 * 1024,
            max_sessions_per_minute=0,
            size=128,
            generator="warp",
        )
        # errors logged by the server or the libraries under it (e.g. a background task that
        # failed after an offer was accepted) are failures too
        self._errors = _ErrorLog(self.failures)
        logging.getLogger().addHandler(self._errors)
        self._server = ServerThread(cfg)
        base = self._server.start()
        self.port = int(base.rsplit(":", 1)[1])
        self.app = self._server.app
        state = self.app[STATE]

        async def make_session() -> tuple[str, str]:
            session = state.new_session("whip")  # no peer: it never times out
            return session.id, session.viewer_id

        self.session, self.viewer = asyncio.run_coroutine_threadsafe(
            make_session(), self._server._loop
        ).result(30)
        self.offers = real_offers()

    def stop(self) -> None:
        self._server.stop()
        logging.getLogger().removeHandler(self._errors)

    # -- requests --------------------------------------------------------------------------
    def request(
        self,
        endpoint: str,
        method: str,
        path: str,
        body: bytes = b"",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.base_host, self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            status, hdrs = resp.status, {k.lower(): v for k, v in resp.getheaders()}
        except (TimeoutError, http.client.HTTPException, ConnectionError) as exc:
            status, hdrs, data = -1, {}, f"{type(exc).__name__}: {exc}".encode()
        finally:
            conn.close()
        self.record(endpoint, status, f"{method} {path[:80]} -> {data[:200]!r}")
        self.cleanup(status, hdrs, data)
        return status, hdrs, data

    def record(self, endpoint: str, status: int, what: str) -> None:
        self.counts[(endpoint, status)] += 1
        if status >= 500:
            self.failures.append(f"{endpoint}: {status} {what}")
            # strict (the CI test): hypothesis stops and shrinks; the bench run counts and goes on
            assert not self.strict, f"{endpoint}: {status} {what}"

    def cleanup(self, status: int, hdrs: dict[str, str], data: bytes) -> None:
        """Delete what a 2xx created, so the fuzzing never runs into the capacity limits."""
        if status not in (200, 201):
            return
        location = hdrs.get("location", "")
        if hdrs.get("content-type", "").startswith("application/json"):
            try:
                body = json.loads(data)
            except ValueError:
                body = {}
            if (
                isinstance(body, dict)
                and isinstance(body.get("location"), str)
                and body.get("type") == "answer"
            ):
                location = body["location"]
        if location.startswith(("/whip/", "/whep/", "/session/")) and location.count("/") >= 2:
            conn = http.client.HTTPConnection(self.base_host, self.port, timeout=30)
            try:
                conn.request("DELETE", location)
                conn.getresponse().read()
            finally:
                conn.close()

    def raw(self, endpoint: str, payload: bytes, wait_s: float = 2.0) -> int:
        """Bytes as they are on a fresh socket (then a half-close); the status line or -1."""
        with socket.create_connection((self.base_host, self.port), timeout=wait_s) as sock:
            sock.sendall(payload)
            with _suppress(OSError):
                sock.shutdown(socket.SHUT_WR)
            data = b""
            try:
                while len(data) < 64 and b"\r\n" not in data:
                    chunk = sock.recv(4096)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
        status = (
            int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.") and len(data.split(b" ")) > 1 else -1
        )
        self.record(endpoint, status, repr(payload[:200]))
        return status

    def alive(self) -> bool:
        status, _h, _d = self.request("alive", "GET", "/stats")
        return status == 200


class _ErrorLog(logging.Handler):
    def __init__(self, sink: list[str]) -> None:
        super().__init__(logging.ERROR)
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(f"logged {record.levelname} {record.name}: {record.getMessage()[:300]}")


class _suppress:
    def __init__(self, *exc: type[BaseException]) -> None:
        self.exc = exc

    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, ev: Any, tb: Any) -> bool:
        return et is not None and issubclass(et, self.exc)


def real_offers() -> dict[str, str]:
    """aiortc offers as WHIP (send), the page (send+receive) and WHEP (receive) make them."""
    from _webrtc_client import FaceVideoTrack, _offer, face_frames

    from rt_portrait.server.session import new_peer_connection

    async def make() -> dict[str, str]:
        out = {}
        for name, direction in (("whip", "sendonly"), ("page", "sendrecv"), ("whep", "recvonly")):
            pc = new_peer_connection()
            if direction == "recvonly":
                pc.addTransceiver("video", direction=direction)
            else:
                pc.addTransceiver(FaceVideoTrack(face_frames(64, 2)), direction=direction)
            if name == "whip":
                pc.addTransceiver("audio", direction="sendonly")
            out[name] = await _offer(pc)
            await pc.close()
        return out

    return asyncio.run(make())


# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------
def mutate_sdp(sdp: str, rnd: random.Random) -> str:
    lines = sdp.replace("\r\n", "\n").strip("\n").split("\n")
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(9)
        i = rnd.randrange(len(lines)) if lines else 0
        if not lines:
            lines = ["v=0"]
        elif op == 0:
            del lines[i]
        elif op == 1:
            lines.insert(i, lines[i])
        elif op == 2:
            j = rnd.randrange(len(lines))
            lines[i], lines[j] = lines[j], lines[i]
        elif op == 3:  # numbers in a line: huge, negative, zero, out of range
            words = lines[i].split(" ")
            k = rnd.randrange(len(words))
            words[k] = rnd.choice(["70000", "-1", "0", "99999999999999999999", "65535", "4294967296", "NaN"])
            lines[i] = " ".join(words)
        elif op == 4:
            lines[i] = lines[i][: rnd.randrange(len(lines[i]) + 1)]
        elif op == 5:
            lines[i] = "".join(chr(rnd.randrange(1, 0x2FF)) for _ in range(rnd.randrange(40)))
        elif op == 6:
            lines.insert(
                i,
                rnd.choice(
                    [
                        "m=video 9 UDP/TLS/RTP/SAVPF 96",
                        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel",
                        "a=candidate:1 1 udp 1 127.0.0.1 70000 typ host",
                        "a=fingerprint:sha-256 00",
                        "a=setup:active",
                        "a=rtpmap:96 VP8/0",
                        "c=IN IP6 ::1",
                        "a=ssrc:4294967296 cname:x",
                        "a=extmap:99999 urn:x",
                        "a=rtcp-fb:96 nack",
                    ]
                ),
            )
        elif op == 7:
            lines = lines[: rnd.randrange(len(lines) + 1)]
        else:
            lines[i] = lines[i].replace(":", rnd.choice(["", "::", ": ", ":\x00"]), 1)
    return "\r\n".join(lines) + rnd.choice(["\r\n", "\n", ""])


@st.composite
def sdp_text(draw: st.DrawFn, base: str) -> str:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.text(max_size=400))
    if kind == 1:
        return "v=0\r\n" + draw(st.text(max_size=400))
    if kind == 2:
        return base  # the real thing: it must negotiate (and is deleted at once)
    return mutate_sdp(base, random.Random(draw(st.integers(0, 2**32))))


def json_values() -> st.SearchStrategy[Any]:
    scalars = (
        st.none()
        | st.booleans()
        | st.floats(allow_nan=True, allow_infinity=True)
        | st.integers(min_value=-(10**420), max_value=10**420)
        | st.text(max_size=30)
    )
    return st.recursive(
        scalars,
        lambda kids: st.lists(kids, max_size=5) | st.dictionaries(st.text(max_size=12), kids, max_size=5),
        max_leaves=25,
    )


EDIT_KEYS = [
    "yaw",
    "pitch",
    "roll",
    "jaw_open",
    "smile",
    "blink_left",
    "blink_right",
    "brow_raise",
    "gaze_x",
    "gaze_y",
]
STRENGTH_KEYS = ["pose", "expression", "eyes", "mouth"]
HOSTILE_NUMBERS = st.sampled_from(
    [0, -0.0, 1e308, -1e308, 10**400, -(10**400), 2**63, float("nan"), float("inf"), 1e-320]
)


@st.composite
def control_body(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 7))
    if kind == 0:
        return json.dumps(draw(json_values()), allow_nan=True).encode()
    if kind == 1:
        return draw(st.binary(max_size=300))
    if kind == 2:
        depth = draw(st.integers(1, 20_000))
        return (draw(st.sampled_from(["[", '{"a":', '{"edits":'])) * depth).encode()
    if kind == 3:
        return b'{"edits": {"yaw": ' + b"1" * draw(st.integers(300, 20_000)) + b"}}"
    if kind == 4:
        return b" " * draw(st.integers(16_000, 40_000)) + b"{}"
    number = st.floats(-1000, 1000) | st.integers(-1000, 1000) | HOSTILE_NUMBERS | json_values()
    payload: dict[str, Any] = {}
    if draw(st.booleans()):
        payload["edits"] = draw(
            st.dictionaries(st.sampled_from(EDIT_KEYS) | st.text(max_size=8), number, max_size=4)
        )
    if draw(st.booleans()):
        payload["strengths"] = draw(
            st.dictionaries(st.sampled_from(STRENGTH_KEYS) | st.text(max_size=8), number, max_size=4)
        )
    if draw(st.booleans()):
        payload["recalibrate"] = draw(json_values())
    if draw(st.integers(0, 5)) == 0:
        payload[draw(st.text(max_size=8))] = draw(json_values())
    return json.dumps(payload, allow_nan=True).encode()


def image_corpus() -> dict[str, bytes]:
    """Upload payloads: formats, modes, sizes, bombs and non-images (small: fast to decode)."""
    import numpy as np
    from PIL import Image

    from rt_portrait.core.assets import default_portrait, pyfeat_file

    portrait = Image.fromarray(default_portrait()).resize((256, 256))

    def save(img: Image.Image, fmt: str, **kw: Any) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format=fmt, **kw)
        return buf.getvalue()

    def png_claiming(w: int, h: int) -> bytes:
        def chunk(kind: bytes, data: bytes) -> bytes:
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

        ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
        return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))

    gif_bomb = bytearray(save(Image.new("P", (8, 8)), "GIF"))
    gif_bomb[6:10] = struct.pack("<HH", 65535, 65535)
    with Image.open(pyfeat_file("free-mountain-vector-01.jpg")) as img:
        mountain = save(img.convert("RGB").resize((320, 180)), "JPEG")
    sixteen = Image.fromarray(np.asarray(portrait.convert("L"), dtype=np.uint16) * 257)
    return {
        "png": save(portrait, "PNG"),
        "jpeg": save(portrait, "JPEG"),
        "cmyk_jpeg": save(portrait.convert("CMYK"), "JPEG"),
        "gif": save(portrait.convert("P"), "GIF"),
        "tiff": save(portrait, "TIFF"),
        "webp": save(portrait, "WEBP"),
        "bmp": save(portrait, "BMP"),
        "png16": save(sixteen, "PNG"),
        "rgba": save(portrait.convert("RGBA"), "PNG"),
        "one_px": save(Image.new("RGB", (1, 1)), "PNG"),
        "no_face": mountain,
        "png_bomb": png_claiming(100_000, 100_000),
        "gif_bomb": bytes(gif_bomb),
        "wide": png_claiming(4000, 10),
        "empty": b"",
        "text": b"not an image at all",
    }


@st.composite
def upload(draw: st.DrawFn, corpus: dict[str, bytes]) -> tuple[bytes, dict[str, str]]:
    name = draw(st.sampled_from(sorted(corpus)))
    data = corpus[name]
    how = draw(st.integers(0, 9))
    if how in (0, 1) and data:  # truncated
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == 2 and data:  # flipped bytes
        rnd = random.Random(draw(st.integers(0, 2**32)))
        buf = bytearray(data)
        for _ in range(rnd.randint(1, 20)):
            buf[rnd.randrange(len(buf))] = rnd.randrange(256)
        data = bytes(buf)
    elif how == 3:
        data = draw(st.binary(max_size=2000))
    style = draw(st.integers(0, 5))
    if style <= 1:
        return data, {
            "Content-Type": draw(st.sampled_from(["image/png", "application/octet-stream", "", "text/plain"]))
        }
    boundary = (
        "b0undary"
        if draw(st.integers(0, 2))
        else draw(
            st.sampled_from(["b0undary", "x" * 80, "", "a b", "\x7f", "--"])
            | st.text("abcXYZ019-_", min_size=1, max_size=75)
        )
    )
    field_name = draw(st.sampled_from(["image"] * 6 + ["img", "", "image\x00"]))
    header = f'Content-Disposition: form-data; name="{field_name}"; filename="{draw(st.text(max_size=20))}"'
    start = draw(st.integers(0, 9)) > 0
    close = draw(st.integers(0, 9)) > 0
    body = (f"--{boundary}\r\n" if start else "").encode("utf-8", "replace")
    body += header.encode("utf-8", "replace") + b"\r\n\r\n" + data + b"\r\n"
    if close:
        body += f"--{boundary}--\r\n".encode("utf-8", "replace")
    ctype = draw(
        st.sampled_from(
            [
                *[f"multipart/form-data; boundary={boundary}"] * 6,
                "multipart/form-data",
                "multipart/mixed; boundary=z",
            ]
        )
    )
    return body, {"Content-Type": ctype.encode("latin-1", "replace").decode("latin-1")}


PATH_PIECES = [
    "/",
    "..",
    "%2e%2e",
    "%2F",
    "static",
    "app.js",
    "etc",
    "passwd",
    "whip",
    "whep",
    "session",
    "stats",
    "view",
    "offer",
    "%00",
    "\u00e9",
    "?x=1",
    "#f",
    "//",
    "~",
    ";",
    "index.html",
    "favicon.ico",
]
METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "TRACE", "CONNECT", "PROPFIND", "FOO"]


@st.composite
def random_path(draw: st.DrawFn) -> str:
    kind = draw(st.integers(0, 4))
    if kind == 0:
        return "/" + "a" * draw(st.integers(1, 12_000))  # long URLs
    pieces = draw(st.lists(st.sampled_from(PATH_PIECES) | st.text(max_size=10), max_size=8))
    path = "/" + "/".join(pieces)
    return "".join(c if 0x20 < ord(c) < 0x7F else f"%{ord(c) & 0xFF:02X}" for c in path)


# ---------------------------------------------------------------------------------------
# One hypothesis run per endpoint
# ---------------------------------------------------------------------------------------
def fuzzers(target: Target, examples: int) -> dict[str, Callable[[], None]]:
    cfg = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=False,
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    corpus = image_corpus()
    sid, viewer = target.session, target.viewer
    sdp_headers = {"Content-Type": "application/sdp"}

    @cfg
    @given(
        sdp_text(target.offers["whip"]),
        st.sampled_from(["application/sdp"] * 6 + ["application/sdp; charset=utf-8", "text/plain", ""]),
    )
    def whip(sdp: str, ctype: str) -> None:
        target.request("whip", "POST", "/whip", sdp.encode("utf-8", "surrogatepass"), {"Content-Type": ctype})

    @cfg
    @given(sdp_text(target.offers["whep"]), st.sampled_from([viewer] * 8 + [sid, "x", "", "A" * 300]))
    def whep(sdp: str, who: str) -> None:
        target.request("whep", "POST", f"/whep/{who}", sdp.encode("utf-8", "surrogatepass"), sdp_headers)

    @cfg
    @given(st.data())
    def offer(data: st.DataObject) -> None:
        kind = data.draw(st.integers(0, 4))
        if kind == 0:
            body = json.dumps(data.draw(json_values()), allow_nan=True).encode()
        elif kind == 1:
            body = data.draw(control_body())
        else:
            payload: dict[str, Any] = {
                "type": data.draw(st.sampled_from(["offer"] * 5 + ["answer", "", None])),  # type: ignore[list-item]
                "sdp": data.draw(sdp_text(target.offers["page"]) | json_values()),
            }
            body = json.dumps(payload, allow_nan=True).encode()
        target.request("offer", "POST", "/offer", body, {"Content-Type": "application/json"})

    @cfg
    @given(control_body(), st.sampled_from(["application/json", "", "text/plain"]), st.integers(0, 9))
    def control(body: bytes, ctype: str, route: int) -> None:
        if route == 0:
            path, headers = "/session/control", {"Authorization": f"Bearer {sid}", "Content-Type": ctype}
        else:
            path, headers = f"/session/{sid}/control", {"Content-Type": ctype}
        target.request("control", "POST", path, body, headers)

    @cfg
    @given(upload(corpus))
    def source(item: tuple[bytes, dict[str, str]]) -> None:
        body, headers = item
        target.request("source", "POST", f"/session/{sid}/source", body, headers)

    @cfg
    @given(
        st.sampled_from(METHODS),
        st.sampled_from(
            [
                "/whip/{c}",
                "/session/{c}",
                "/session/{c}/stats",
                "/session/{c}/control",
                "/whep/{c}/{c}",
                "/session/stats",
                "/stats",
                "/view/{c}",
            ]
        ),
        st.sampled_from([sid, viewer, sid[:-1], sid + "x", "", "..", "%00", sid.upper(), "A" * 5000]),
        st.sampled_from(
            ["", f"Bearer {sid}", "Bearer", "Basic Zm9vOmJhcg==", "Bearer " + "x" * 5000, f"bearer  {viewer}"]
        ),
        st.text(alphabet="abc=&%/.?;0123456789", max_size=24),  # a query string: the space is not finite
        st.binary(max_size=48),
    )
    def session(method: str, route: str, cap: str, auth: str, query: str, body: bytes) -> None:
        if (method == "DELETE" and cap == sid) or (
            method == "DELETE" and auth == f"Bearer {sid}" and route == "/session/{c}"
        ):
            cap = sid + "-not"  # keep the target session alive
        headers = {"Authorization": auth} if auth else {}
        path = route.format(c=cap) + (f"?{query}" if query else "")
        target.request("session", method, path, body if method not in ("GET", "HEAD") else b"", headers)

    @cfg
    @given(random_path(), st.sampled_from(METHODS), st.binary(max_size=64))
    def paths(path: str, method: str, body: bytes) -> None:
        target.request("paths", method, path, body if method not in ("GET", "HEAD") else b"")

    @cfg
    @given(
        st.sampled_from(
            [
                "/whip",
                "/offer",
                f"/session/{sid}/control",
                f"/session/{sid}/source",
                f"/whep/{viewer}",
                "/stats",
            ]
        ),
        st.sampled_from(["-1", "1000", "0", "99999999999999999999", "abc", "10, 20", "1e3", " 5", "+5"]),
        st.binary(max_size=200),
        st.booleans(),
        st.booleans(),
    )
    def length(path: str, claimed: str, body: bytes, chunked: bool, expect: bool) -> None:
        head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {claimed}\r\n"
        if chunked:
            head += "Transfer-Encoding: chunked\r\n"
        if expect:
            head += "Expect: 100-continue\r\n"
        target.raw("length", (head + "Connection: close\r\n\r\n").encode() + body)

    return {
        "whip": whip,
        "whep": whep,
        "offer": offer,
        "control": control,
        "source": source,
        "session": session,
        "paths": paths,
        "length": length,
    }


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def run(examples: int, endpoints: list[str]) -> dict[str, Any]:
    target = Target(strict=False)
    target.start()
    report: dict[str, Any] = {"examples": examples, "endpoints": {}}
    try:
        runs = fuzzers(target, examples)
        report["rss_start_mb"] = rss_mb()
        for name in endpoints:
            t0 = time.monotonic()
            runs[name]()
            statuses = {str(s): n for (e, s), n in sorted(target.counts.items()) if e == name}
            report["endpoints"][name] = {
                "requests": sum(statuses.values()),
                "statuses": statuses,
                "seconds": round(time.monotonic() - t0, 1),
                "rss_mb": round(rss_mb(), 1),
            }
            print(f"{name}: {report['endpoints'][name]}", flush=True)
        report["alive"] = target.alive()
        report["rss_end_mb"] = rss_mb()
        report["failures"] = target.failures[:20]
    finally:
        target.stop()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description="fuzz the live server's endpoints (hypothesis, in process)")
    parser.add_argument("--examples", type=int, default=10_000, help="hypothesis examples per endpoint")
    parser.add_argument(
        "--endpoint", action="append", choices=ENDPOINTS, help="only these endpoints (repeatable)"
    )
    parser.add_argument("--json", default=None, help="write the report (counts by endpoint and status) here")
    parser.add_argument(
        "--allocator",
        choices=ALLOCATORS,
        default="auto",
        help="the in-process server's native allocator, as `rt-portrait serve --allocator` (default auto)",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    use_allocator(args.allocator)  # may re-execute this script with jemalloc preloaded, as serve does
    report = run(args.examples, args.endpoint or list(ENDPOINTS))
    report["allocator"] = loaded_allocator()
    print(json.dumps(report, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    sys.exit(0 if report.get("alive") and not report.get("failures") else 1)


if __name__ == "__main__":
    main()
