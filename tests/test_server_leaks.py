"""Sessions one after another must not leave anything behind: each WHIP session runs a real
talking-face clip, replaces its source once mid-call (a second pipeline state to release),
and ends with DELETE. Before the fix every session left its tracker graphs and threads
behind (12 sessions: RSS 672 -> 1375 MB, threads 8 -> 53)."""

from __future__ import annotations

import asyncio
import gc
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import FaceVideoTrack, Usage, face_frames, process_usage, running_server, whip_publish

from rt_portrait.core.assets import default_portrait
from rt_portrait.server.app import STATE, ServerConfig
from rt_portrait.server.memory import trim_native_heap

SESSIONS = 20
WARM_UP = 5  # sessions before the baseline: first-use caches, allocator arenas


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


async def wait_until(predicate: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


async def sessions_in_a_row(count: int) -> list[Usage]:
    other = png_bytes(default_portrait("grace_hopper"))
    frames = face_frames(256, 48)
    samples: list[Usage] = []
    cfg = ServerConfig(ice_loopback_only=True, connect_timeout_s=20.0)
    async with running_server(cfg) as (base, app), aiohttp.ClientSession() as http:
        state = app[STATE]
        for i in range(count):
            pc, location = await whip_publish(http, base, FaceVideoTrack(frames, max_frames=100_000))
            stats = state.sessions[location.rsplit("/", 1)[1]].stats
            assert await wait_until(lambda s=stats: s.frames_out >= 10, 30), f"session {i} never ran"
            form = aiohttp.FormData()
            form.add_field("image", other, filename="grace.png", content_type="image/png")
            async with http.post(
                f"{base}{location}/source".replace("/whip/", "/session/"), data=form
            ) as resp:
                assert resp.status == 200, await resp.text()
            done = stats.frames_out
            assert await wait_until(lambda s=stats, n=done + 5: s.frames_out >= n, 30)
            async with http.delete(f"{base}{location}") as resp:
                assert resp.status == 200
            await pc.close()
            assert await wait_until(lambda: not state.sessions, 10), "the session was not removed"
            await asyncio.sleep(0.3)  # the peer's transports finish closing
            gc.collect()
            trim_native_heap()  # what the server does after each session, once more after gc
            samples.append(process_usage())
    return samples


def test_twenty_sessions_in_a_row_leave_rss_and_threads_flat() -> None:
    samples = asyncio.run(asyncio.wait_for(sessions_in_a_row(SESSIONS), 400))
    print(
        "\n"
        + "\n".join(f"session {i + 1}: {u.rss_mb:.0f} MB, {u.threads} threads" for i, u in enumerate(samples))
    )
    after = samples[WARM_UP:]
    threads = [u.threads for u in samples]
    rss = [round(u.rss_mb) for u in samples]
    # Before the fix: ~60 MB and 4 threads more per session. Allocator noise (tens of MB up
    # and down, more in a process that already ran other tests) is allowed; a trend is not.
    assert max(threads[WARM_UP:]) <= threads[WARM_UP - 1] + 1, threads
    slope = float(np.polyfit(np.arange(len(after)), [u.rss_mb for u in after], 1)[0])
    assert slope < 4.0, f"RSS grows {slope:.1f} MB per session: {rss}"
    early, late = np.median(rss[WARM_UP : WARM_UP + 5]), np.median(rss[-5:])
    assert late - early < 50, f"RSS {early:.0f} -> {late:.0f} MB after warm-up: {rss}"
