"""End to end in a real browser: headless Debian Chromium (driven by selenium through
/usr/bin/chromedriver, nothing downloaded) plays a real talking-face clip as its fake
webcam, sends it to the server from the page and receives the avatar.

The clip's frames carry their index as black/white blocks in the top rows; the server runs
with ``probe_rows`` so the avatar carries the index of the driver frame it was made from.
That aligns every avatar snapshot with its exact driver frame (for the motion check) and
gives a capture-to-display latency (camera preview vs avatar, both shown in the page).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import ServerProcess, face_frames, mouth_openings, open_vs_shut_auc, read_stamp, stamp

from rt_portrait.core.assets import default_portrait

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
        reason="needs Debian chromium and chromium-driver at /usr/bin/chromium and /usr/bin/chromedriver "
        "(apt-get install chromium chromium-driver)",
    ),
]

SIDE = 256  # fake camera resolution
FPS = 24  # the clip's own rate
CLIP_START = 144  # 6 s in: from here the speaker's mouth opens and closes
N_FRAMES = 192  # 8 s, looped by Chromium
STAMP_ROWS = 16
SNAP_WIDTH = 512  # the avatar's native size; the astronaut's face is small in the frame
SNAP_ROWS = STAMP_ROWS * SNAP_WIDTH // SIDE  # stamp height in the (upscaled) camera snapshot
SNAP_EVERY_S = 0.2
RUN_S = 12.0


def write_y4m(frames: list[np.ndarray], path: Path, fps: int) -> None:
    import av

    with av.open(str(path), "w", format="yuv4mpegpipe") as out:
        stream = out.add_stream("rawvideo", rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = "yuv420p"
        for image in frames:
            for packet in stream.encode(
                av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
            ):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def gray_corr(a: np.ndarray, b: np.ndarray, side: int = 64) -> float:
    def g(x: np.ndarray) -> np.ndarray:
        v = np.asarray(
            Image.fromarray(x).convert("L").resize((side, side), Image.BILINEAR), np.float64
        ).ravel()
        return v - v.mean()

    x, y = g(a), g(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y) + 1e-9))


def data_url_to_rgb(url: str | None) -> np.ndarray | None:
    if not url or "," not in url:
        return None
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB"))


@dataclass
class BrowserRun:
    driver_frames: list[np.ndarray]
    snapshots: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (camera, avatar)
    rtp: dict[str, Any] = field(default_factory=dict)  # the page's counters, read last
    rtp_before: dict[str, Any] = field(default_factory=dict)  # read before the server's stats
    server_stats: dict[str, Any] = field(default_factory=dict)


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrowserRun]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    work = tmp_path_factory.mktemp("browser")
    frames = [stamp(f, i, STAMP_ROWS) for i, f in enumerate(face_frames(SIDE, N_FRAMES, start=CLIP_START))]
    y4m = work / "driver.y4m"
    write_y4m(frames, y4m, FPS)

    # the server in its own process (as deployed): no GIL shared with selenium and image decoding
    server = ServerProcess(["--probe-rows", str(STAMP_ROWS)])
    asyncio.run(server.wait_ready())
    base = server.base
    profile = Path(tempfile.mkdtemp(prefix="chromium-profile-", dir=work))
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--allow-loopback-in-peer-connection",
        "--use-fake-device-for-media-stream",
        "--use-fake-ui-for-media-stream",
        f"--use-file-for-fake-video-capture={y4m}",
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
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    # an explicit driver path: selenium skips Selenium Manager (no download)
    browser = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    browser.set_script_timeout(30)
    run = BrowserRun(driver_frames=frames)
    raw: list[tuple[str | None, str | None]] = []
    try:
        browser.get(base + "/")
        browser.execute_script("window.rtpStart()")
        deadline = time.monotonic() + 45
        state = {}
        while time.monotonic() < deadline:
            state = browser.execute_script(
                "return {state: window.rtp.state, error: window.rtp.error, decoded: window.rtp.framesDecoded}"
            )
            if state["error"] or (state["state"] == "connected" and state["decoded"] > 0):
                break
            time.sleep(0.25)
        assert not state.get("error"), f"page error: {state['error']}"
        assert state.get("state") == "connected", f"never connected: {state}"
        t_end = time.monotonic() + RUN_S
        for _ in range(int(RUN_S / SNAP_EVERY_S) + 5):  # bounded in count and time
            if time.monotonic() > t_end:
                break
            snap = browser.execute_script(f"return window.rtpSnapshot({SNAP_WIDTH})")
            raw.append((snap["camera"], snap["avatar"]))  # decoded after the run, off the clock
            time.sleep(SNAP_EVERY_S)
        # page counters, then the server's, then the page's again two stats polls (500 ms) later:
        # each comparison below sets a count against one taken after it
        run.rtp_before = browser.execute_script("return JSON.parse(JSON.stringify(window.rtp))")
        run.server_stats = json.loads(
            browser.execute_async_script(
                "const cb = arguments[0]; fetch('/stats').then(r => r.text()).then(cb, e => cb('{}'))"
            )
        )
        time.sleep(1.2)
        run.rtp = browser.execute_script("return JSON.parse(JSON.stringify(window.rtp))")
        browser.execute_script("window.rtpStop()")
    finally:
        browser.quit()
        server.stop()
        shutil.rmtree(profile, ignore_errors=True)
    for cam_url, av_url in raw:
        cam, av_img = data_url_to_rgb(cam_url), data_url_to_rgb(av_url)
        if cam is not None and av_img is not None:
            run.snapshots.append((cam, av_img))
    yield run


def test_camera_frames_reach_the_server_and_avatar_frames_reach_the_page(
    browser_run: BrowserRun, record_property: Any
) -> None:
    """Every frame crosses the transport both ways, and the server renders all it can.

    How many camera frames the server renders depends on this machine's speed: when a frame
    costs more than the camera's interval the session renders the newest frame and skips the
    rest (by design: skipping keeps the lag flat). On a 2-core machine shared with Chromium
    that rate swings with the load, so throughput is a benchmark goal
    (``bench/bench_latency.py``: each session holds 30 fps), not an assertion here. What
    holds on any machine: frames are not lost between the page and the server, every camera
    frame is rendered or counted as skipped, and the pipeline never stalls."""
    sent_before = browser_run.rtp_before["framesSent"]
    received = browser_run.rtp["framesDecoded"]
    server = (browser_run.server_stats.get("sessions") or [{}])[0]
    frames_in, frames_out, skipped = (int(server.get(k, 0)) for k in ("frames_in", "frames_out", "dropped"))
    summary = (
        f"page sent {sent_before}, server got {frames_in}, rendered {frames_out}, skipped {skipped}, "
        f"page decoded {received} ({received / max(browser_run.rtp['framesSent'], 1):.0%} of the camera "
        f"frames); server: size {server.get('size')}, fps in {server.get('fps_in')}, "
        f"out {server.get('fps_out')}, ms {server.get('stage_ms')}"
    )
    print("\n" + summary)
    record_property(
        "avatar_frames_per_camera_frame", round(received / max(browser_run.rtp["framesSent"], 1), 3)
    )
    assert sent_before > FPS * RUN_S * 0.5, f"the page sent only {sent_before} camera frames"
    assert frames_in >= 0.95 * sent_before, f"camera frames lost on the way to the server: {summary}"
    # up to two frames are in the pipeline or waiting as the newest when the stats are read
    assert server.get("errors") == 0, f"frames failed on the server: {server.get('errors')}"
    assert frames_in - 2 <= frames_out + skipped <= frames_in, f"frames unaccounted for: {summary}"
    assert received >= 0.95 * frames_out, f"avatar frames lost on the way to the page: {summary}"
    # a stall (a blocked executor, a deadlock between players) renders a handful of frames;
    # the slowest run on record rendered 36% of the camera frames
    assert frames_out >= 0.2 * frames_in, f"the pipeline stalled: {summary}"


def test_avatar_shows_the_source_not_the_driver(browser_run: BrowserRun) -> None:
    assert len(browser_run.snapshots) >= 10
    source = default_portrait()
    crop = lambda img: img[SNAP_ROWS + 2 :]  # noqa: E731 - skip the probe rows
    src_small = np.asarray(Image.fromarray(source).resize((SNAP_WIDTH, SNAP_WIDTH)))
    to_source = [gray_corr(crop(av), crop(src_small)) for _, av in browser_run.snapshots]
    to_driver = [gray_corr(crop(av), crop(cam)) for cam, av in browser_run.snapshots]
    assert np.median(to_source) > 0.6, (
        f"avatar does not look like the source: median corr {np.median(to_source):.2f}"
    )
    assert np.median(to_source) > np.median(to_driver) + 0.2, (np.median(to_source), np.median(to_driver))


def test_capture_to_display_latency_is_recorded(browser_run: BrowserRun, record_property: Any) -> None:
    n = len(browser_run.driver_frames)
    lags = []
    for cam, av in browser_run.snapshots:
        c, a = read_stamp(cam, SNAP_ROWS), read_stamp(av, SNAP_ROWS)
        if c < n and a < n:
            lags.append(((c - a) % n) * 1000.0 / FPS)
    assert len(lags) >= 0.5 * len(browser_run.snapshots), (
        f"stamps unreadable in {len(browser_run.snapshots) - len(lags)} snapshots"
    )
    p50, p90 = np.percentile(lags, [50, 90])
    estimate = browser_run.rtp.get("latencyEstimateMs")
    record_property("capture_to_display_ms_p50", round(float(p50), 1))
    record_property("capture_to_display_ms_p90", round(float(p90), 1))
    record_property("page_latency_estimate_ms", estimate)
    print(
        f"\ncapture->display (stamped, frame-quantised {1000 / FPS:.0f} ms): p50 {p50:.0f} ms, p90 {p90:.0f} ms; "
        f"page estimate {estimate} ms; parts {browser_run.rtp.get('latencyParts')}"
    )
    assert estimate is not None and estimate > 0
    assert p90 < 2000, f"the avatar lags the camera by {p90:.0f} ms (p90)"


def test_motion_follows_the_driver(browser_run: BrowserRun, record_property: Any) -> None:
    """Needs the real pipeline: the avatar's mouth opening tracks the driver frame it was
    made from (aligned by the stamp the server carried over).

    The criterion is a rank statistic, not a linear correlation: the clip's mouth is either
    shut or open (its openings form two clusters), the avatar's response to them is a step,
    and which frames the server renders, and at which working size, depends on this
    machine's load. So: of the snapshots whose driver frame is among the most open third,
    and those among the most shut third, how often does an open one show the wider avatar
    mouth (the area under the ROC curve)? Unrelated openings give 0.5 +- 0.1 for these group
    sizes; runs here gave 0.93-1.0 while the Pearson r of the same frames swung 0.70-0.88
    (and 0.49 on one CI run, which failed the former r > 0.5)."""
    n = len(browser_run.driver_frames)
    pairs = [(read_stamp(av, SNAP_ROWS), av) for _, av in browser_run.snapshots]
    pairs = [(k, av) for k, av in pairs if k < n]
    driver_open = mouth_openings(browser_run.driver_frames)
    avatar_open = mouth_openings([av for _, av in pairs])
    xs, ys = [], []
    for (k, _), a in zip(pairs, avatar_open, strict=False):
        if a is not None and driver_open[k] is not None:
            xs.append(driver_open[k])
            ys.append(a)
    assert len(xs) >= 24, f"only {len(xs)} aligned avatar/driver pairs with faces"
    x, y = np.asarray(xs), np.asarray(ys)
    assert np.std(x) > 0.01, "the driver clip does not move its mouth enough to test"
    auc, (n_shut, n_open) = open_vs_shut_auc(x, y)
    r = float(np.corrcoef(x, y)[0, 1]) if np.std(y) > 0 else 0.0
    print(
        f"\nmouth opening, avatar vs driver: AUC {auc:.2f} (open third vs shut third), Pearson r {r:.2f}, {len(x)} frames"
    )
    record_property("mouth_open_auc", round(auc, 3))
    record_property("mouth_open_r", round(r, 3))
    # chance gives 0.5 +- sqrt((a + b + 1) / (12 a b)): 0.8 is 2.9 sd above it for the usual
    # groups of 16, and still 2 sd for the smallest allowed (8)
    assert min(n_shut, n_open) >= 8, (n_shut, n_open)
    assert auc >= 0.8, (
        f"avatar mouth opening does not follow the driver: AUC {auc:.2f} (r = {r:.2f}) over {len(x)} frames"
    )
