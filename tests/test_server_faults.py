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
from rt_portrait.server.session import (
    CONSENT_SWEEPS_S,
    cancel_orphan_consent_checks,
    close_peer,
    ice_connections,
    loopback_ice,
    new_peer_connection,
)

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


class FailingGenerator:
    """A generator that raises on every frame (a broken network, a missing engine)."""

    def __call__(self, inputs: object) -> object:
        raise RuntimeError("injected generator failure")


def test_tracker_or_generator_raising_falls_back_and_is_counted() -> None:
    async def scenario() -> None:
        cfg = ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0, generator="warp")
        async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
            state = app[STATE]
            hurt_call, other_call = (
                await whip_start(http, base, track()),
                await whip_start(http, base, track()),
            )
            hurt, other = state.sessions[hurt_call.session], state.sessions[other_call.session]
            assert await wait_until(lambda: hurt.stats.frames_out >= 5 and other.stats.frames_out >= 5, 30)

            # the generator raises: frames go on, rendered by the warp generator (degradation is
            # held still here, so that it does not swap the injected generator out)
            hurt._degrade = lambda anim, total_ms: None  # type: ignore[method-assign]
            anim = hurt._anim
            anim.generator = FailingGenerator()  # type: ignore[assignment]
            start = hurt.stats.frames_out
            assert await wait_until(lambda: hurt.stats.faults.get("generator", 0) >= 10, 20)
            assert hurt.stats.frames_out >= start + 8 and hurt.stats.errors == 0, hurt.stats
            assert "injected generator failure" in hurt.stats.last_error
            anim.generator = anim.animator.generator

            # the tracker raises: frames go on, held as frames without a face
            real_track = anim.tracker.track

            def broken_track(frame: object, **kw: object) -> object:
                raise RuntimeError("injected tracker failure")

            anim.tracker.track = broken_track  # type: ignore[method-assign]
            start = hurt.stats.frames_out
            assert await wait_until(lambda: hurt.stats.faults.get("tracker", 0) >= 10, 20)
            assert hurt.stats.frames_out >= start + 8 and hurt.stats.errors == 0, hurt.stats
            assert hurt.stats.face_found is False
            anim.tracker.track = real_track  # type: ignore[method-assign]
            assert await wait_until(lambda: hurt.stats.face_found is True, 10)

            # stats report the faults; the other session saw none of it
            async with http.get(f"{base}/session/{hurt.id}/stats") as resp:
                faults = (await resp.json())["faults"]
            assert faults["tracker"] >= 10 and faults["generator"] >= 10
            assert other.stats.faults == {} and other.stats.errors == 0
            before = other.stats.frames_out
            assert await wait_until(lambda: other.stats.frames_out >= before + 10, 20)
            for pc in (hurt_call.pc, other_call.pc):
                await pc.close()

    run(scenario())


def test_source_replaced_mid_call_releases_the_old_pipeline() -> None:
    import io

    from PIL import Image

    from rt_portrait.core.assets import default_portrait

    pngs = []
    for name in ("grace_hopper", "astronaut", "grace_hopper"):
        buf = io.BytesIO()
        Image.fromarray(default_portrait(name)).save(buf, format="PNG")
        pngs.append(buf.getvalue())

    async def scenario() -> None:
        cfg = ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0)
        async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
            state = app[STATE]
            call, other_call = await whip_start(http, base, track()), await whip_start(http, base, track())
            session, other = state.sessions[call.session], state.sessions[other_call.session]
            assert await wait_until(lambda: session.stats.frames_out >= 5, 30)
            replaced = []
            for png in pngs:  # back to back, while frames are in flight
                replaced.append(session._anim)
                async with http.post(f"{base}/session/{call.session}/source", data=png) as resp:
                    assert resp.status == 200, await resp.text()
            current = session._anim
            # every replaced pipeline state is released (its tracker graph closed), the new one runs
            assert await wait_until(lambda: all(a.tracker._closed for a in replaced), 10)
            assert not current.tracker._closed
            start = session.stats.frames_out
            assert await wait_until(lambda: session.stats.frames_out >= start + 10, 20)
            assert session.stats.errors == 0 and other.stats.errors == 0
            assert session.source_name == "upload" and other.source_name != "upload"
            await session.close()
            assert current.tracker._closed
            for pc in (call.pc, other_call.pc):
                await pc.close()

    run(scenario())


def test_sigterm_closes_every_peer_within_five_seconds() -> None:
    import signal

    from _webrtc_client import ServerProcess

    async def scenario() -> None:
        server = ServerProcess(["--size", "128"])
        try:
            await server.wait_ready()
            async with aiohttp.ClientSession() as http:
                calls = [await whip_start(http, server.base, track()) for _ in range(2)]
                sink = Sink()
                player, _ = await whep_play(http, server.base, calls[0].whep, sink)
                assert await sink.wait_for(5, 30)
                peers = [c.pc for c in calls] + [player]
                assert all(p.connectionState == "connected" for p in peers)
                t0 = time.monotonic()
                server.proc.send_signal(signal.SIGTERM)
                ended = await wait_until(
                    lambda: all(p.connectionState in ("closed", "failed") for p in peers), 5.0
                )
                gone = time.monotonic() - t0
                states = [p.connectionState for p in peers]
                for p in peers:
                    await p.close()
                sink.stop()
            exit_code = await asyncio.get_running_loop().run_in_executor(None, server.proc.wait, 10)
            assert ended, f"peers still {states} {gone:.1f} s after SIGTERM"
            assert exit_code == 0, server.output()[-2000:]
            assert server.output().count("closed") >= 2
        finally:
            if server.proc.poll() is None:
                server.stop()

    run(scenario())


async def _connected_pair() -> tuple[RTCPeerConnection, RTCPeerConnection]:
    a, b = new_peer_connection(), new_peer_connection()
    a.createDataChannel("ping")
    with loopback_ice(True):
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
    while a.iceConnectionState != "completed" or b.iceConnectionState != "completed":
        await asyncio.sleep(0.02)
    return a, b


def test_a_consent_check_left_running_after_the_close_is_cancelled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Seen once in CI: aioice's consent-check task outlived the close of its connection
    (started, or a pair nominated, while close() was under way) and sent on a closed socket;
    Python's datagram transport then raised an AttributeError that no one retrieved. Here that
    state is replayed on a closed connection (its nominated pairs back, a consent task started):
    unswept, the task dies of it (check interval shortened); swept by close_peer, it is
    cancelled before its first send; an open connection's task is left alone."""
    import aioice.ice

    async def scenario() -> None:
        a, b = await _connected_pair()
        a_ice, b_ice = ice_connections(a), ice_connections(b)
        assert a_ice and b_ice
        assert cancel_orphan_consent_checks(a_ice + b_ice) == 0, "open: their checks go on"
        assert all(not c._query_consent_task.done() for c in a_ice + b_ice)
        nominated = [dict(c._nominated) for c in a_ice]
        await close_peer(a)

        def replay() -> list[asyncio.Task[None]]:
            tasks = []
            for c, pairs in zip(a_ice, nominated, strict=True):
                c._nominated.update(pairs)
                c._query_consent_task = asyncio.create_task(c.query_consent())
                tasks.append(c._query_consent_task)
            return tasks

        late = replay()
        await asyncio.sleep(CONSENT_SWEEPS_S[1] + 0.2)
        assert all(t.cancelled() for t in late)

        # the control: the same state, not swept, fails on its first send
        with monkeypatch.context() as m:
            m.setattr(aioice.ice, "CONSENT_INTERVAL", 0.05)
            unswept = replay()
            done, _ = await asyncio.wait(unswept, timeout=5.0)
        assert len(done) == len(unswept)
        assert all(isinstance(t.exception(), AttributeError) for t in unswept)
        await close_peer(b)

    run(scenario(), timeout=60.0)
