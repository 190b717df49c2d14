"""Private sessions: capabilities, the server token, the public and admin stats, the rate
limit and redacted access logs.

Before: an anonymous GET /stats listed every session id, and that id was the only
credential for DELETE, control, source and WHEP playback."""

from __future__ import annotations

import asyncio
import logging
import re
import sys
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import FaceVideoTrack, Sink, face_frames, page_start, running_server, whip_start

from rt_portrait.server.app import STATE, ServerConfig, redact_path
from rt_portrait.server.memory import loaded_allocator

T = TypeVar("T")
TOKEN = "s3rver-t0ken-for-tests"


def run(coro: Awaitable[T], timeout: float = 90.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def config(**kw: Any) -> ServerConfig:
    return ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0, **kw)


def track() -> FaceVideoTrack:
    return FaceVideoTrack(face_frames(256, 24), max_frames=600)


def test_capabilities_and_public_stats() -> None:
    async def scenario() -> None:
        async with running_server(config()) as (base, app), aiohttp.ClientSession() as http:
            call = await whip_start(http, base, track())
            owner = call.session
            viewer = call.whep.rsplit("/", 1)[1]
            # unguessable: >= 128 random bits each (token_urlsafe: 6 bits per character), distinct
            for secret in (owner, viewer):
                assert re.fullmatch(r"[A-Za-z0-9_-]{22,}", secret), secret
            assert owner != viewer
            pc2, body = await page_start(http, base, track(), Sink())
            assert body["session"] not in (owner, viewer) and body["whep"] == f"/whep/{body['viewer']}"
            assert app[STATE].session_for_viewer(viewer) is app[STATE].sessions[owner]
            assert app[STATE].session_for_viewer(owner) is None

            # anonymous stats: counts and timings, never a capability
            async with http.get(f"{base}/stats") as resp:
                text = await resp.text()
                public = await resp.json()
            assert resp.status == 200 and public["active"] == 2 and public["view"] == "public"
            for secret in (owner, viewer, body["session"], body["viewer"]):
                assert secret not in text
            assert all("id" not in s and "controls" not in s for s in public["sessions"])
            # a wrong admin token is refused, not silently downgraded
            async with http.get(f"{base}/stats", headers={"Authorization": "Bearer nope"}) as resp:
                assert resp.status == 401
            # the owner's own view: by path and by Bearer
            async with http.get(f"{base}/session/{owner}/stats") as resp:
                assert resp.status == 200 and (await resp.json())["viewer"] == viewer
            auth = {"Authorization": f"Bearer {owner}"}
            async with http.get(f"{base}/session/stats", headers=auth) as resp:
                assert resp.status == 200 and (await resp.json())["id"] == owner
            async with http.post(f"{base}/session/control", json={"edits": {"yaw": 5}}, headers=auth) as resp:
                assert resp.status == 200 and (await resp.json())["edits"]["yaw"] == 5.0

            # the playback capability grants nothing else, and guesses get plain 404s
            for method, path in (
                ("DELETE", f"/whip/{viewer}"),
                ("DELETE", f"/session/{viewer}"),
                ("GET", f"/session/{viewer}/stats"),
                ("POST", f"/session/{viewer}/control"),
                ("POST", f"/session/{viewer}/source"),
                ("PATCH", f"/whip/{viewer}"),
                ("POST", f"/whep/{owner}"),
                ("DELETE", "/session"),
            ):
                headers = {"Content-Type": "application/sdp"} if method == "POST" else {}
                async with http.request(method, f"{base}{path}", data=b"{}", headers=headers) as resp:
                    assert resp.status == 404, (method, path, resp.status)
                    assert owner not in await resp.text()
            async with http.delete(f"{base}/session", headers={"Authorization": f"Bearer {viewer}"}) as resp:
                assert resp.status == 404
            # the owner ends it by Bearer
            async with http.delete(f"{base}/session", headers=auth) as resp:
                assert resp.status == 200
            assert owner not in app[STATE].sessions and app[STATE].session_for_viewer(viewer) is None
            await call.pc.close()
            await pc2.close()

    run(scenario())


def test_server_token_and_admin_view() -> None:
    async def scenario() -> None:
        async with running_server(config(token=TOKEN)) as (base, app), aiohttp.ClientSession() as http:
            for token in (None, "wrong"):
                with pytest.raises(RuntimeError, match="401"):
                    await whip_start(http, base, track(), token=token)
                with pytest.raises(RuntimeError, match="401"):
                    await page_start(http, base, track(), Sink(), token=token)
            assert not app[STATE].sessions
            call = await whip_start(http, base, track(), token=TOKEN)
            pc2, body = await page_start(http, base, track(), Sink(), token=TOKEN)
            async with http.get(f"{base}/stats", headers={"Authorization": f"Bearer {TOKEN}"}) as resp:
                admin = await resp.json()
            assert admin["view"] == "admin"
            assert admin["allocator"] == loaded_allocator()  # the process's, for operators only
            async with http.get(f"{base}/stats") as resp:
                assert "allocator" not in await resp.json()
            assert {s["id"] for s in admin["sessions"]} == {call.session, body["session"]}
            assert {s["whep"] for s in admin["sessions"]} == {call.whep, body["whep"]}
            # OBS sends the server token on DELETE too: the capability in the path decides
            async with http.delete(
                f"{base}{call.location}", headers={"Authorization": f"Bearer {TOKEN}"}
            ) as r:
                assert r.status == 200
            await call.pc.close()
            await pc2.close()

    run(scenario())


def test_session_creation_is_rate_limited_per_address() -> None:
    async def scenario() -> None:
        cfg = config(max_sessions_per_minute=2)
        async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
            calls = [await whip_start(http, base, track()) for _ in range(2)]
            for call in calls:
                async with http.delete(f"{base}{call.location}") as resp:
                    assert resp.status == 200
                await call.pc.close()
            with pytest.raises(RuntimeError, match="429"):
                await whip_start(http, base, track())
            with pytest.raises(RuntimeError, match="429"):
                await page_start(http, base, track(), Sink())
            assert not app[STATE].sessions
            # another address is not affected
            app[STATE].admit("192.0.2.7")

    run(scenario())


def test_access_log_redacts_capabilities_and_demotes_polling(caplog: pytest.LogCaptureFixture) -> None:
    secret = "Abcdefghijklmnopqrstuvwxyz012345"
    assert redact_path(f"/whip/{secret}") == "/whip/Abcd…"
    assert redact_path(f"/session/{secret}/control") == "/session/Abcd…/control"
    assert redact_path(f"/whep/{secret}/{secret}") == "/whep/Abcd…/Abcd…"
    assert redact_path("/stats") == "/stats"

    async def scenario() -> None:
        async with running_server(config()) as (base, _app), aiohttp.ClientSession() as http:
            call = await whip_start(http, base, track())
            for _ in range(3):
                async with http.get(f"{base}/session/{call.session}/stats") as resp:
                    assert resp.status == 200
            async with http.delete(f"{base}{call.location}") as resp:
                assert resp.status == 200
            await call.pc.close()
            return call.session

    with caplog.at_level(logging.DEBUG, logger="aiohttp.access"):
        owner = run(scenario())
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "aiohttp.access"]
    assert lines and all(owner not in msg for _, msg in lines), lines
    polls = [level for level, msg in lines if msg.split('"')[1].endswith("/stats")]
    assert polls and set(polls) == {logging.DEBUG}
    assert any(level == logging.INFO and "DELETE /whip/" in msg for level, msg in lines)
