"""The viewer page ``/view/<viewer>``: one session's avatar alone, full-window, over WHEP (an
OBS Browser Source). The HTTP checks run everywhere; the browser check opens the page in
headless Debian Chromium while a WHIP session runs and counts the video frames it decodes."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiortc import RTCSessionDescription
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import FaceVideoTrack, ServerProcess, face_frames, running_server

from rt_portrait.core.assets import default_portrait
from rt_portrait.server.app import ServerConfig
from rt_portrait.server.session import loopback_ice, new_peer_connection

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
SIDE = 256  # driver frames and the avatar (the server streams at its working size)


# ---------------------------------------------------------------------------------------
# HTTP: the route serves the bare page for any well-formed link, and nothing else
# ---------------------------------------------------------------------------------------
def test_view_route_serves_the_bare_page() -> None:
    async def main() -> None:
        async with (
            running_server(ServerConfig(ice_loopback_only=True)) as (base, _),
            aiohttp.ClientSession() as http,
        ):
            async with http.get(f"{base}/view/AbC-123_x") as resp:
                html = await resp.text()
                assert resp.status == 200 and resp.content_type == "text/html"
                assert resp.headers["Cache-Control"] == "no-store"
                assert resp.headers["Referrer-Policy"] == "no-referrer"  # the URL is a capability
            assert '<video id="avatar"' in html and "/static/view.js" in html
            async with http.get(f"{base}/static/view.js") as resp:
                js = await resp.text()
                assert resp.status == 200 and "/whep/" in js and "clean" in js
            for bad in ("a.b", "x" * 129, "%20"):
                async with http.get(f"{base}/view/{bad}") as resp:
                    assert resp.status == 404, bad
                    assert "playback link" in (await resp.json())["error"]

    asyncio.run(main())


# ---------------------------------------------------------------------------------------
# Chromium: the page plays a live session
# ---------------------------------------------------------------------------------------
@dataclass
class Published:
    viewer: str  # the playback capability (Link rel="whep")
    location: str  # the owner's capability (Location /whip/<session>)


class Publisher:
    """A WHIP client in its own thread and event loop, sending real face frames until stopped."""

    def __init__(self, base: str, fps: float = 15.0) -> None:
        self.base = base
        self.fps = fps
        self.result: Published | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(
            target=self._loop.run_until_complete, args=(self._main(),), daemon=True
        )

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        pc = new_peer_connection()
        try:
            pc.addTransceiver(FaceVideoTrack(face_frames(SIDE, 96), fps=self.fps), direction="sendonly")
            with loopback_ice(True):
                await pc.setLocalDescription(await pc.createOffer())
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{self.base}/whip",
                    data=pc.localDescription.sdp,
                    headers={"Content-Type": "application/sdp"},
                ) as resp,
            ):
                body = await resp.text()
                assert resp.status == 201, f"WHIP failed: {resp.status} {body}"
                location, link = resp.headers["Location"], resp.headers.get("Link")
            await pc.setRemoteDescription(RTCSessionDescription(sdp=body, type="answer"))
            # the playback capability: Link </whep/<viewer>>; rel="whep", apart from the owner's
            m = re.search(r'<[^>]*/whep/([^>/]+)>\s*;\s*rel="?whep"?', link or "")
            assert m is not None, f"no playback link in the WHIP answer: Link {link!r}"
            self.result = Published(m.group(1), location)
            self._ready.set()
            await self._stop.wait()
        except BaseException as exc:
            self.error = exc
            self._ready.set()
        finally:
            await pc.close()

    def start(self, timeout: float = 60.0) -> Published:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("WHIP publish did not complete")
        if self.error is not None or self.result is None:
            raise RuntimeError(f"WHIP publish failed: {self.error!r}")
        return self.result

    def stop(self) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(20)


def corr(a: np.ndarray, b: np.ndarray, side: int = 64) -> float:
    def g(x: np.ndarray) -> np.ndarray:
        v = np.asarray(Image.fromarray(x).convert("L").resize((side, side), Image.BILINEAR), np.float64)
        return v.ravel() - v.mean()

    x, y = g(a), g(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


@dataclass
class ViewRun:
    base: str
    published: Published
    plain: dict  # what the page with its info box reported
    clean: dict  # the same for ?clean=1
    frame: np.ndarray | None  # one decoded frame of the clean page
    unknown: dict  # what the page said for a link no session has


FRAMES_JS = """
const v = document.getElementById('avatar');
return {
  state: window.rtpView.state, error: window.rtpView.error, whepUrl: window.rtpView.whepUrl,
  frames: v.getVideoPlaybackQuality().totalVideoFrames, w: v.videoWidth, h: v.videoHeight,
  rect: v.getBoundingClientRect().toJSON(), win: [window.innerWidth, window.innerHeight],
  info: !!document.getElementById('info'),
  infoUrl: document.getElementById('whep-url') ? document.getElementById('whep-url').value : null,
  cleanUrl: document.getElementById('clean-url') ? document.getElementById('clean-url').value : null,
  visible: [...document.body.children].filter(e => e.tagName !== 'SCRIPT').map(e => e.id),
};
"""

SNAPSHOT_JS = """
const v = document.getElementById('avatar');
const c = document.createElement('canvas');
c.width = v.videoWidth; c.height = v.videoHeight;
c.getContext('2d').drawImage(v, 0, 0);
return c.toDataURL('image/png');
"""


def watch(browser, url: str, seconds: float = 4.0) -> dict:
    """Open ``url``, wait for the first decoded frame, then count frames for ``seconds``."""
    browser.get(url)
    deadline = time.monotonic() + 60
    first: dict = {}
    while time.monotonic() < deadline:
        first = browser.execute_script(FRAMES_JS)
        if first["frames"] > 0:
            break
        time.sleep(0.25)
    assert first.get("frames", 0) > 0, f"no video frame arrived: {first}"
    time.sleep(seconds)
    last = browser.execute_script(FRAMES_JS)
    return {**last, "first_frames": first["frames"], "seconds": seconds}


@pytest.fixture(scope="module")
def view_run() -> Iterator[ViewRun]:
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        pytest.skip(
            "needs Debian chromium and chromium-driver at /usr/bin (apt-get install chromium chromium-driver)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    server = ServerProcess([])
    asyncio.run(server.wait_ready())
    publisher = Publisher(server.base)
    profile = Path(tempfile.mkdtemp(prefix="chromium-view-"))
    browser = None
    try:
        published = publisher.start()
        options = webdriver.ChromeOptions()
        options.binary_location = str(CHROMIUM)
        for flag in (
            "--allow-loopback-in-peer-connection",
            "--disable-features=WebRtcHideLocalIpsWithMdns",  # plain candidates for a loopback-only server
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-quic",
            "--autoplay-policy=no-user-gesture-required",
            "--window-size=800,600",
            f"--user-data-dir={profile}",
        ):
            options.add_argument(flag)
        browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        browser.set_script_timeout(30)
        view = f"{server.base}/view/{published.viewer}"
        plain = watch(browser, view)
        clean = watch(browser, view + "?clean=1")
        url = browser.execute_script(SNAPSHOT_JS)
        frame = np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))
        browser.get(f"{server.base}/view/{'x' * 32}")  # well formed, but no session has it
        unknown: dict = {}
        for _ in range(40):  # bounded: 10 s
            unknown = browser.execute_script("return {state: rtpView.state, error: rtpView.error}")
            if unknown["error"]:
                break
            time.sleep(0.25)
        yield ViewRun(server.base, published, plain, clean, frame, unknown)
    finally:
        if browser is not None:
            browser.quit()
        publisher.stop()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)


@pytest.mark.browser
def test_view_page_plays_the_session(view_run: ViewRun) -> None:
    for run in (view_run.plain, view_run.clean):
        assert run["error"] is None and run["state"] == "playing", run
        grown = run["frames"] - run["first_frames"]
        print(f"\n{grown} frames decoded in {run['seconds']} s ({run['w']}x{run['h']}), state {run['state']}")
        # the publisher sends 15 fps; on a loaded 2-core machine the server may skip some
        assert grown >= 2 * run["seconds"], f"only {grown} new frames in {run['seconds']} s: {run}"
        assert (run["w"], run["h"]) == (SIDE, SIDE)


@pytest.mark.browser
def test_view_page_is_full_window_with_nothing_else_when_clean(view_run: ViewRun) -> None:
    clean = view_run.clean
    assert clean["visible"] == ["avatar"] and not clean["info"]
    rect, (w, h) = clean["rect"], clean["win"]
    assert (rect["x"], rect["y"], rect["width"], rect["height"]) == (0, 0, w, h)


@pytest.mark.browser
def test_view_page_shows_the_whep_url_for_copying(view_run: ViewRun) -> None:
    plain = view_run.plain
    expected = f"{view_run.base}/whep/{view_run.published.viewer}"
    assert plain["info"] and plain["infoUrl"] == expected == plain["whepUrl"]
    assert plain["cleanUrl"] == f"{view_run.base}/view/{view_run.published.viewer}?clean=1"
    # the page hands out playback only, never the owner's capability
    assert view_run.published.location.rsplit("/", 1)[-1] not in plain["infoUrl"] + plain["cleanUrl"]


@pytest.mark.browser
def test_view_page_shows_the_avatar(view_run: ViewRun) -> None:
    assert view_run.frame is not None and view_run.frame.shape[:2] == (SIDE, SIDE)
    source = np.asarray(Image.fromarray(default_portrait()).resize((SIDE, SIDE), Image.BILINEAR))
    driver = face_frames(SIDE, 96)[0]
    to_source, to_driver = corr(view_run.frame, source), corr(view_run.frame, driver)
    print(f"\nview frame: corr to the source {to_source:.2f}, to the driver {to_driver:.2f}")
    assert to_source > 0.7 and to_source > to_driver + 0.2, (to_source, to_driver)


@pytest.mark.browser
def test_view_page_says_when_no_session_has_the_link(view_run: ViewRun) -> None:
    assert "no live session has this link" in (view_run.unknown.get("error") or ""), view_run.unknown
