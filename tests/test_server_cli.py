"""The CLI and page items of the reliability issue. Before: ``animate`` with a driver
without a face exited 0 and wrote the unchanged portrait, saying nothing; outputs were
mode 0600; SIGTERM left a ``.part`` file behind; Ctrl-C printed a traceback; several options
had no help; the page showed a black box before Start; /favicon.ico answered 404."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))

from _webrtc_client import running_server

from rt_portrait.cli import build_parser, main
from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.core.video import atomic_output, read_frames, write_video
from rt_portrait.server.app import ServerConfig

FAST = ["--size", "96", "--generator", "warp", "--quiet"]


@pytest.fixture()
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


@pytest.fixture(scope="module")
def portrait_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("src") / "astronaut.png"
    Image.fromarray(default_portrait()).resize((256, 256)).save(path)
    return path


def test_every_cli_option_has_help() -> None:
    missing = []

    def walk(parser: argparse.ArgumentParser, name: str) -> None:
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub, subparser in action.choices.items():
                    walk(subparser, f"{name} {sub}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "rt-portrait")
    assert not missing, missing


def test_outputs_honour_the_umask(tmp_path: Path) -> None:
    for mask, mode in ((0o022, 0o644), (0o027, 0o640), (0o002, 0o664)):
        previous = os.umask(mask)
        try:
            target = tmp_path / f"out-{mask:o}.bin"
            with atomic_output(target) as tmp:
                tmp.write_bytes(b"x")
            assert target.stat().st_mode & 0o777 == mode, oct(target.stat().st_mode)
        finally:
            os.umask(previous)


def test_animate_without_a_face_anywhere_is_an_error(
    tmp_path: Path, portrait_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out.mp4"
    code = main(
        [
            "animate",
            "--source",
            str(portrait_png),
            "--driver",
            str(pyfeat_file("no_face.mp4")),
            "-o",
            str(out),
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert code == 1, err
    assert "no face in any" in err and "Traceback" not in err
    assert not out.exists() and not list(tmp_path.glob("*.part*"))


def test_threads_default_to_torchs_own_and_serve_shares_the_cores_among_its_sessions(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from rt_portrait.server.app import serve_threads

    calls: list[int] = []
    monkeypatch.setattr(torch, "set_num_threads", calls.append)
    missing = ["animate", "--source", str(tmp_path / "none.png"), "--driver", str(tmp_path / "none.mp4")]
    assert main([*missing, "-o", str(tmp_path / "a.mp4")]) == 2  # fails on the file, after threads
    assert calls == []  # torch's default: one thread per core
    assert main(["--threads", "3", *missing, "-o", str(tmp_path / "b.mp4")]) == 2
    assert calls == [3]
    assert build_parser().parse_args(["serve"]).threads is None
    assert serve_threads(None, max_sessions=4, cores=2) == 1  # every slot busy: no oversubscription
    assert serve_threads(None, max_sessions=1, cores=2) == 1  # one core is the media transport's
    assert serve_threads(None, max_sessions=1, cores=8) == 7
    assert serve_threads(None, max_sessions=4, cores=16) == 3
    assert serve_threads(None, max_sessions=4, cores=1) == 1
    assert serve_threads(3, max_sessions=4, cores=2) == 3  # asked for


def test_animate_with_partial_coverage_warns_with_the_count(
    tmp_path: Path, portrait_png: Path, capsys: pytest.CaptureFixture[str], umask_022: None
) -> None:
    face = list(read_frames(pyfeat_file("single_face.mp4"), max_frames=12))
    side = face[0].shape[:2]
    empty = [
        np.asarray(Image.fromarray(f).resize((side[1], side[0])))
        for f in read_frames(pyfeat_file("no_face.mp4"), max_frames=12)
    ]
    driver = write_video(tmp_path / "mixed.mp4", face + empty, 24)
    out = tmp_path / "out.mp4"
    code = main(["animate", "--source", str(portrait_png), "--driver", str(driver), "-o", str(out), *FAST])
    err = capsys.readouterr().err
    assert code == 0 and out.is_file(), err
    line = next(ln for ln in err.splitlines() if "warning" in ln)
    missing = int(line.split("warning: ")[1].split(" of ")[0])
    assert 8 <= missing <= 16 and " of 24 driver frames had no face" in line, line
    assert out.stat().st_mode & 0o777 == 0o644  # mkstemp's 0600 no more


@pytest.mark.parametrize(
    ("sig", "code", "word"), [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")]
)
def test_signals_remove_partial_files_and_exit_with_one_line(
    tmp_path: Path, portrait_png: Path, sig: signal.Signals, code: int, word: str
) -> None:
    out = tmp_path / "out.mp4"
    cmd = [
        sys.executable, "-m", "rt_portrait.cli", "animate", "--source", str(portrait_png),
        "--driver", str(pyfeat_file("WolfgangLanger_Pexels.mp4")), "-o", str(out), *FAST,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # A suite started in the background (nohup, `&`) hands its children SIGINT ignored, and
    # Python keeps an inherited ignore: give the child the default disposition, as a terminal would.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob(".out.*part*")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
        assert list(tmp_path.glob(".out.*part*")), "the partial output never appeared"
        time.sleep(1.0)  # some frames into the file
        proc.send_signal(sig)
        _stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    lines = [
        ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith(("WARNING", "I0000", "W0000"))
    ]
    assert proc.returncode == code, stderr[-2000:]
    assert "Traceback" not in stderr and any(word in ln for ln in lines), stderr[-2000:]
    assert not out.exists() and not list(tmp_path.glob(".out.*")), list(tmp_path.iterdir())


def test_page_previews_the_source_and_has_a_favicon() -> None:
    async def scenario() -> None:
        async with (
            running_server(ServerConfig(ice_loopback_only=True)) as (base, _app),
            aiohttp.ClientSession() as http,
        ):
            async with http.get(f"{base}/") as resp:
                page = await resp.text()
            assert 'id="preview"' in page and 'src="/portrait"' in page and 'rel="icon"' in page
            async with http.get(f"{base}/portrait") as resp:
                assert resp.status == 200 and resp.content_type == "image/jpeg"
                import io

                img = Image.open(io.BytesIO(await resp.read()))
                assert img.size[0] > 32 and img.size[1] > 32
            async with http.get(f"{base}/favicon.ico") as resp:
                assert resp.status == 200 and "svg" in resp.content_type
            async with http.get(f"{base}/static/app.js") as resp:
                js = await resp.text()
            assert "showPreview" in js and "hidePreview" in js

    asyncio.run(asyncio.wait_for(scenario(), 60))
