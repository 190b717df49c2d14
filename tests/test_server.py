"""The live server over real WebRTC on 127.0.0.1: WHIP ingest of real face video, WHEP
playback, the page's /offer path, isolation between sessions, limits and bad input.

Every test runs its own server on a free port with ICE restricted to loopback, and every
wait is bounded (frame counts and timeouts)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import (
    FaceVideoTrack,
    Sink,
    face_frames,
    page_call,
    running_server,
    whep_play,
    whip_publish,
    whip_start,
)

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.server.app import STATE, ServerConfig, decode_portrait
from rt_portrait.server.session import keep_loopback_candidates

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def config(**kw: Any) -> ServerConfig:
    return ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0, **kw)


def gray_small(image: np.ndarray, side: int = 64) -> np.ndarray:
    return np.asarray(
        Image.fromarray(image).convert("L").resize((side, side), Image.BILINEAR), dtype=np.float64
    )


def corr(a: np.ndarray, b: np.ndarray) -> float:
    x, y = gray_small(a).ravel(), gray_small(b).ravel()
    x, y = x - x.mean(), y - y.mean()
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


async def stats(http: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with http.get(f"{base}/stats") as resp:
        assert resp.status == 200
        return await resp.json()


async def wait_sessions(http: aiohttp.ClientSession, base: str, n: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    count = -1
    while time.monotonic() < deadline:
        count = len((await stats(http, base))["sessions"])
        if count == n:
            break
        await asyncio.sleep(0.2)
    return count


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


# ---------------------------------------------------------------------------------------
def test_whip_ingest_whep_playback_and_delete() -> None:
    async def scenario() -> None:
        source = default_portrait()
        driver = face_frames(256, 48)
        async with running_server(config()) as (base, _app), aiohttp.ClientSession() as http:
            track = FaceVideoTrack(driver, max_frames=600)
            call = await whip_start(http, base, track)
            pub, location = call.pc, call.location
            assert location.startswith("/whip/") and call.whep.startswith("/whep/")
            # ICE stays on loopback: the answer offers only 127.0.0.1
            answer_candidates = [
                ln for ln in pub.remoteDescription.sdp.splitlines() if ln.startswith("a=candidate:")
            ]
            assert answer_candidates and all(" 127.0.0.1 " in ln for ln in answer_candidates), (
                answer_candidates
            )
            sid = location.rsplit("/", 1)[1]
            sink = Sink(keep_every=10)
            player, play_location = await whep_play(http, base, call.whep, sink)
            assert play_location.startswith(f"{call.whep}/")
            assert await sink.wait_for(45, 40), f"only {sink.count} avatar frames arrived"
            # the avatar is the source portrait (its size and its content), not the driver
            side = config().output_size or config().size  # streamed at the working size by default
            assert sink.sizes == {(side, side)}
            last = sink.kept[-1]
            assert corr(last, source) > 0.8 > corr(last, driver[0])
            st = (await stats(http, base))["sessions"][0]
            assert "id" not in st and st["kind"] == "whip" and st["viewers"] == 1
            assert st["frames_in"] >= 30 and st["frames_out"] >= 30
            assert {"decode", "total", "server_total"} <= set(st["stage_ms"])
            # ending playback keeps the session; ending the session frees everything
            async with http.delete(f"{base}{play_location}") as resp:
                assert resp.status == 200
            async with http.get(f"{base}/session/{sid}/stats") as resp:
                assert (await resp.json())["viewers"] == 0
            async with http.delete(f"{base}{location}") as resp:
                assert resp.status == 200
            assert await wait_sessions(http, base, 0, 5) == 0
            async with http.delete(f"{base}{location}") as resp:
                assert resp.status == 404
                assert "error" in await resp.json()
            # the page and its script are served
            async with http.get(f"{base}/") as resp:
                assert resp.status == 200 and "app.js" in await resp.text()
            async with http.get(f"{base}/static/app.js") as resp:
                assert resp.status == 200 and "rtpSnapshot" in await resp.text()
            await pub.close()
            await player.close()
            sink.stop()

    run(scenario())


def test_two_sessions_are_isolated() -> None:
    async def scenario() -> None:
        default = default_portrait()
        other = default_portrait("grace_hopper")
        async with running_server(config()) as (base, app), aiohttp.ClientSession() as http:
            sinks = [Sink(keep_every=5), Sink(keep_every=5)]
            calls = []
            for sink in sinks:
                track = FaceVideoTrack(face_frames(256, 48), max_frames=900)
                calls.append(await page_call(http, base, track, sink))
            (pc_a, sid_a), (pc_b, sid_b) = calls
            # session A changes its source; B keeps the server's
            form = aiohttp.FormData()
            form.add_field("image", png_bytes(other), filename="grace.png", content_type="image/png")
            async with http.post(f"{base}/session/{sid_a}/source", data=form) as resp:
                body = await resp.json()
                assert resp.status == 200, body
                assert body["width"] == other.shape[1]
            # controls apply per session
            async with http.post(
                f"{base}/session/{sid_a}/control", json={"edits": {"yaw": 20, "smile": 5}}
            ) as resp:
                assert resp.status == 200
                assert (await resp.json())["edits"]["smile"] == 1.0  # clamped to its range
            async with http.get(f"{base}/session/{sid_b}/stats") as resp:
                assert (await resp.json())["controls"]["edits"]["yaw"] == 0.0
            start = [s.count for s in sinks]
            assert await sinks[0].wait_for(start[0] + 20, 30) and await sinks[1].wait_for(start[1] + 20, 30)
            assert corr(sinks[0].kept[-1], other) > corr(sinks[0].kept[-1], default)
            assert corr(sinks[1].kept[-1], default) > corr(sinks[1].kept[-1], other)

            # a failing pipeline in A must not disturb B
            class Broken:
                def __getattr__(self, name: str) -> Any:
                    raise RuntimeError("injected failure")

                def __call__(self, frame: np.ndarray) -> Any:
                    raise RuntimeError("injected failure")

            session_a = app[STATE].sessions[sid_a]
            session_a._anim = Broken()
            for _ in range(100):  # bounded: the failure shows within a few frames
                if session_a.stats.errors:
                    break
                await asyncio.sleep(0.02)
            assert "injected failure" in session_a.stats.last_error
            before_b = sinks[1].count
            assert await sinks[1].wait_for(before_b + 20, 20), "session B stalled when A failed"
            # A gives up after repeated failures; B keeps running
            assert await wait_sessions(http, base, 1, 15) == 1
            assert list(app[STATE].sessions) == [sid_b]
            for pc in (pc_a, pc_b):
                await pc.close()
            for sink in sinks:
                sink.stop()

    run(scenario(), timeout=150)


def test_client_vanishing_is_cleaned_up() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (base, _app), aiohttp.ClientSession() as http:
            sink = Sink()
            pc, sid = await page_call(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600), sink)
            assert await sink.wait_for(10, 30)
            await pc.close()  # no DELETE: the client just goes away
            sink.stop()
            assert await wait_sessions(http, base, 0, 20) == 0
            async with http.get(f"{base}/session/{sid}/stats") as resp:
                assert resp.status == 404

    run(scenario())


def test_session_limit() -> None:
    async def scenario() -> None:
        async with running_server(config(max_sessions=1)) as (base, _app), aiohttp.ClientSession() as http:
            pc1, loc1 = await whip_publish(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600))
            with pytest.raises(RuntimeError, match="503"):
                await whip_publish(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600))
            with pytest.raises(RuntimeError, match=r"503.*full"):
                await page_call(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600), Sink())
            async with http.delete(f"{base}{loc1}") as resp:
                assert resp.status == 200
            await pc1.close()
            pc2, loc2 = await whip_publish(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600))
            assert loc2 != loc1
            await pc2.close()

    run(scenario())


def test_bad_input_gets_clear_errors_and_the_server_keeps_serving() -> None:
    small_limits = dict(max_upload_bytes=200_000, max_image_side=1024, max_sdp_bytes=16_000)

    async def scenario() -> None:
        async with running_server(config(**small_limits)) as (base, app), aiohttp.ClientSession() as http:
            # a healthy session runs through all of it
            sink = Sink()
            pc, sid = await page_call(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=2000), sink)
            assert await sink.wait_for(5, 30)

            async def status(method: str, path: str, **kw: Any) -> tuple[int, str]:
                async with http.request(method, f"{base}{path}", **kw) as resp:
                    text = await resp.text()
                    return resp.status, text

            sdp_hdr = {"Content-Type": "application/sdp"}
            cases: list[tuple[str, str, dict[str, Any], int]] = [
                ("garbage SDP", "/whip", dict(data=b"\x00\xffnot sdp at all", headers=sdp_hdr), 400),
                (
                    "wrong content type",
                    "/whip",
                    dict(data="v=0\r\n", headers={"Content-Type": "text/plain"}),
                    415,
                ),
                (
                    "huge SDP",
                    "/whip",
                    dict(data="v=0\r\nm=video 9\r\n" + "a=x:" + "y" * 100_000, headers=sdp_hdr),
                    413,
                ),
                (
                    "SDP without video",
                    "/whip",
                    dict(
                        data="v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\ns=-\r\nt=0 0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 0\r\n",
                        headers=sdp_hdr,
                    ),
                    400,
                ),
                (
                    "hostile SDP lines",
                    "/whip",
                    dict(
                        data="v=0\r\nm=video -1 RTP/SAVPF 96\r\na=rtpmap:96\r\na=fingerprint:sha-256 zz\r\nc=IN IP4 999.1.1.1\r\n",
                        headers=sdp_hdr,
                    ),
                    400,
                ),
                (
                    "WHEP of an unknown session",
                    "/whep/nope",
                    dict(data="v=0\r\nm=video 9\r\n", headers=sdp_hdr),
                    404,
                ),
                (
                    "offer not JSON",
                    "/offer",
                    dict(data="{{", headers={"Content-Type": "application/json"}),
                    400,
                ),
                ("offer wrong shape", "/offer", dict(json={"type": "answer", "sdp": 3}), 400),
                (
                    "offer garbage SDP",
                    "/offer",
                    dict(json={"type": "offer", "sdp": "v=0\r\nm=video nonsense\r\n"}),
                    400,
                ),
                ("unknown control", f"/session/{sid}/control", dict(json={"edits": {"nose": 1}}), 400),
                (
                    "non-numeric control",
                    f"/session/{sid}/control",
                    dict(json={"strengths": {"pose": "max"}}),
                    400,
                ),
                ("control not an object", f"/session/{sid}/control", dict(json=[1, 2]), 400),
                ("non-image upload", f"/session/{sid}/source", dict(data=b"GIF? no, plain text" * 10), 415),
                ("oversized upload", f"/session/{sid}/source", dict(data=b"\x89PNG" + b"0" * 300_000), 413),
                (
                    "image too large",
                    f"/session/{sid}/source",
                    dict(data=png_bytes(np.zeros((1100, 64, 3), np.uint8))),
                    413,
                ),
                ("upload to unknown session", "/session/nope/source", dict(data=b"x"), 404),
                (
                    "trickle PATCH",
                    f"/whip/{sid}",
                    dict(data="a=candidate", headers={"Content-Type": "application/trickle-ice-sdpfrag"}),
                    405,
                ),
            ]
            for name, path, kw, expected in cases:
                code, text = await status("POST" if "PATCH" not in name else "PATCH", path, **kw)
                assert code == expected, f"{name}: {code} {text[:200]}"
                assert "error" in json.loads(text), f"{name}: no JSON error: {text[:200]}"
            # a portrait without a face is refused with a message that says so
            with Image.open(pyfeat_file("free-mountain-vector-01.jpg")) as img:
                mountain = png_bytes(np.asarray(img.convert("RGB").resize((640, 360))))
            code, text = await status("POST", f"/session/{sid}/source", data=mountain)
            assert code == 422 and "face" in json.loads(text)["error"], text
            # the healthy session never noticed and the server still takes new sessions
            before = sink.count
            assert await sink.wait_for(before + 10, 20)
            st = await stats(http, base)
            assert list(app[STATE].sessions) == [sid] and st["active"] == 1
            assert st["sessions"][0]["errors"] == 0
            pc2, loc2 = await whip_publish(http, base, FaceVideoTrack(face_frames(256, 24), max_frames=600))
            async with http.delete(f"{base}{loc2}") as resp:
                assert resp.status == 200
            for peer in (pc, pc2):
                await peer.close()
            sink.stop()

    run(scenario(), timeout=120)


def test_driver_without_a_face_holds_and_reports() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (base, _app), aiohttp.ClientSession() as http:
            frames = face_frames(256, 30, video="no_face.mp4")
            pc, location = await whip_publish(http, base, FaceVideoTrack(frames, max_frames=600))
            sid = location.rsplit("/", 1)[1]
            deadline = time.monotonic() + 30
            st: dict[str, Any] = {}
            while time.monotonic() < deadline:
                async with http.get(f"{base}/session/{sid}/stats") as resp:
                    st = await resp.json()
                if st["frames_out"] >= 10:
                    break
                await asyncio.sleep(0.2)
            assert st["frames_out"] >= 10, st
            assert st["face_found"] is False and st["errors"] == 0, st
            await pc.close()

    run(scenario())


def test_portrait_decoding_limits() -> None:
    gray = np.asarray(Image.open(pyfeat_file("BWPictureHuman.jpg")))
    rgba = pyfeat_file("Image_with_alpha.png").read_bytes()
    assert decode_portrait(png_bytes(gray), 4096).shape == gray.shape[:2] + (3,)
    assert decode_portrait(rgba, 4096).shape[2] == 3
    with pytest.raises(Exception, match="limit is 100"):
        decode_portrait(png_bytes(np.zeros((64, 200, 3), np.uint8)), 100)


def test_loopback_candidate_filter() -> None:
    sdp = (
        "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
        "a=candidate:1 1 udp 2122260223 192.0.2.2 50000 typ host\r\n"
        "a=candidate:2 1 udp 2122260223 127.0.0.1 50001 typ host\r\n"
        "a=candidate:3 1 udp 2122260223 abcd.local 50002 typ host\r\n"
    )
    kept = keep_loopback_candidates(sdp)
    assert "127.0.0.1 50001" in kept and "192.0.2.2" not in kept and ".local" not in kept
    assert kept.startswith("v=0\r\nm=video")


def test_over_budget_session_degrades_instead_of_lagging() -> None:
    """A pipeline whose cost grows with the working size and exceeds the frame budget at
    full size: the session lowers its size and keeps delivering the newest frames."""
    from types import SimpleNamespace

    from rt_portrait.head.types import Edits, RetargetConfig

    class SizeBoundStage:
        def __init__(self, size: int) -> None:
            self.size = size
            self.edits = Edits()
            self.retarget = RetargetConfig()

        def recalibrate(self) -> None:
            pass

        def __call__(self, frame: np.ndarray, t: float | None = None) -> SimpleNamespace:
            cost = 0.06 * (self.size / 256) ** 2  # 60 ms at 256: twice a 30-fps budget
            time.sleep(cost)
            return SimpleNamespace(
                image=np.zeros((128, 128, 3), np.uint8), face_found=True, timings_ms={"total": cost * 1e3}
            )

    async def scenario() -> None:
        async with running_server(config()) as (base, app), aiohttp.ClientSession() as http:
            pc, location = await whip_publish(
                http, base, FaceVideoTrack(face_frames(256, 24), max_frames=900)
            )
            sid = location.rsplit("/", 1)[1]
            app[STATE].sessions[sid]._anim = SizeBoundStage(256)
            deadline = time.monotonic() + 30
            st: dict[str, Any] = {}
            while time.monotonic() < deadline:
                async with http.get(f"{base}/session/{sid}/stats") as resp:
                    st = await resp.json()
                if st["degrade_level"] >= 2 and st["frames_out"] > 60:
                    break
                await asyncio.sleep(0.3)
            assert st["degrade_level"] >= 1 and st["size"] < 256, st
            assert st["dropped"] > 0  # stale frames were skipped, not queued
            assert st["errors"] == 0
            await pc.close()

    run(scenario())
