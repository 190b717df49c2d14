"""Injected faults, each with a healthy session beside it that must not notice: offers and
players that never connect, a client that vanishes without DELETE, a tracker or generator
that raises, a source replaced mid-call, and SIGTERM.

Before: a never-connecting offer stayed listed after its deadline (the deadline task
cancelled itself inside Session.close()), DELETE answered 200 without removing it, and three
such offers made every later /whip and /offer answer 503 until a restart."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import aiohttp
import pytest
from aiortc import RTCPeerConnection

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import (
    FaceVideoTrack,
    Sink,
    _offer,
    face_frames,
    running_server,
    whep_play,
    whip_start,
)

from rt_portrait.server.app import STATE, ServerConfig
from rt_portrait.server.session import new_peer_connection

T = TypeVar("T")


def run(coro: Awaitable[T], timeout: float = 120.0) -> T:
    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout)

    return asyncio.run(bounded())


def track(frames: int = 100_000) -> FaceVideoTrack:
    return FaceVideoTrack(face_frames(256, 24), max_frames=frames)


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def dangling(
    http: aiohttp.ClientSession, url: str, direction: str
) -> tuple[RTCPeerConnection, int, str]:
    """POST an offer and never apply the answer: the client never starts ICE."""
    pc = new_peer_connection()
    if direction == "sendonly" or direction == "sendrecv":
        pc.addTransceiver(track(), direction=direction)
    else:
        pc.addTransceiver("video", direction=direction)
    sdp = await _offer(pc)
    if url.endswith("/offer"):
        async with http.post(url, json={"sdp": sdp, "type": "offer"}) as resp:
            body = await resp.json()
            return pc, resp.status, body.get("session", "")
    async with http.post(url, data=sdp, headers={"Content-Type": "application/sdp"}) as resp:
        return pc, resp.status, resp.headers.get("Location", "")


def vanish(pc: RTCPeerConnection) -> None:
    """The client disappears without a word (crash, lost network): its ICE sockets close
    silently, so no DTLS close, no RTCP BYE and no more consent responses reach the server."""
    for transceiver in pc.getTransceivers():
        ice = transceiver.sender.transport.transport
        for protocol in list(ice._connection._protocols):
            if protocol.transport is not None:
                protocol.transport.close()


def test_offers_and_players_that_never_connect_are_reaped_and_free_their_slots() -> None:
    async def scenario() -> None:
        cfg = ServerConfig(
            ice_loopback_only=True, connect_timeout_s=3.0, max_sessions=4, max_viewers_per_session=2
        )
        async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
            state = app[STATE]
            healthy = await whip_start(http, base, track())
            session = state.sessions[healthy.session]
            assert await wait_until(lambda: session.stats.frames_out >= 5, 30)
            peers = []
            for url, direction in ((f"{base}/whip", "sendonly"),) * 2 + ((f"{base}/offer", "sendrecv"),):
                pc, status, _ = await dangling(http, url, direction)
                peers.append(pc)
                assert status in (200, 201), status
            pc, status, _ = await dangling(http, f"{base}/whip", "sendonly")
            peers.append(pc)
            assert status == 503  # full: 1 healthy + 3 that never connect
            for _ in range(2):
                pc, status, _ = await dangling(http, f"{base}{healthy.whep}", "recvonly")
                peers.append(pc)
                assert status == 201
            pc, status, _ = await dangling(http, f"{base}{healthy.whep}", "recvonly")
            peers.append(pc)
            assert status == 503 and len(session.viewers) == 2
            # DELETE removes a never-connected session at once
            stale = next(s for s in state.sessions.values() if s is not session)
            async with http.delete(f"{base}/whip/{stale.id}") as resp:
                assert resp.status == 200
            assert stale.id not in state.sessions
            # the deadline reaps the rest, and the players, and frees their slots
            assert await wait_until(lambda: list(state.sessions) == [healthy.session], 10), len(
                state.sessions
            )
            assert await wait_until(lambda: not session.viewers, 5), len(session.viewers)
            before = session.stats.frames_out
            assert await wait_until(lambda: session.stats.frames_out >= before + 10, 20), (
                "healthy session stalled"
            )
            # new sessions and players are accepted again
            again = await whip_start(http, base, track())
            sink = Sink()
            player, _loc = await whep_play(http, base, healthy.whep, sink)
            assert await sink.wait_for(5, 20)
            for pc in [*peers, again.pc, player, healthy.pc]:
                await pc.close()
            sink.stop()

    run(scenario())


def test_vanished_client_is_reaped_within_the_consent_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    import aioice.ice

    # RFC 7675 consent: aioice checks every CONSENT_INTERVAL s and gives up after
    # CONSENT_FAILURES misses (5 s x 6 = 30 s by default); shortened here, same mechanism.
    monkeypatch.setattr(aioice.ice, "CONSENT_INTERVAL", 0.25)
    timeout_s = aioice.ice.CONSENT_INTERVAL * 1.2 * aioice.ice.CONSENT_FAILURES

    async def scenario() -> None:
        cfg = ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0)
        async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
            state = app[STATE]
            gone, stays = await whip_start(http, base, track()), await whip_start(http, base, track())
            a, b = state.sessions[gone.session], state.sessions[stays.session]
            assert await wait_until(lambda: a.stats.frames_out >= 5 and b.stats.frames_out >= 5, 30)
            vanish(gone.pc)
            t0 = time.monotonic()
            assert await wait_until(lambda: gone.session not in state.sessions, timeout_s + 5)
            reaped_after = time.monotonic() - t0
            assert reaped_after < timeout_s + 5, reaped_after
            before = b.stats.frames_out
            assert await wait_until(lambda: b.stats.frames_out >= before + 10, 20), (
                "the other session stalled"
            )
            assert list(state.sessions) == [stays.session]
            for pc in (gone.pc, stays.pc):
                await pc.close()

    run(scenario())
