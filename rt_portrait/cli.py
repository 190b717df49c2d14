"""``rt-portrait``: a thin command-line layer over the Python API."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

from rt_portrait.core.signals import raise_on_sigterm
from rt_portrait.generator.select import add_generator_arguments, generator_options
from rt_portrait.head.types import REFERENCES, Edits, Strengths

EDIT_HELP = {
    "yaw": "degrees, + turns the face to its own left",
    "pitch": "degrees, + tilts the face down",
    "roll": "degrees, + counter-clockwise in the image",
    "jaw_open": "0..1",
    "smile": "-1..1",
    "blink_left": "0..1 (the subject's left eye)",
    "blink_right": "0..1",
    "brow_raise": "-1..1",
    "gaze_x": "-1..1, + toward the image's right",
    "gaze_y": "-1..1, + down",
}


def _add_edit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("edits (applied on top of the motion)")
    for f in fields(Edits):
        g.add_argument(
            f"--{f.name.replace('_', '-')}", dest=f.name, type=float, default=0.0, help=EDIT_HELP[f.name]
        )


def _add_motion_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("motion")
    g.add_argument(
        "--mode",
        choices=["relative", "absolute"],
        default="relative",
        help="driver motion relative to its first frame, or absolute",
    )
    for f in fields(Strengths):
        g.add_argument(
            f"--{f.name}-strength",
            dest=f"strength_{f.name}",
            type=float,
            default=1.0,
            help=f"gain of the driver's {f.name} motion",
        )
    g.add_argument(
        "--reference",
        choices=list(REFERENCES),
        default="first",
        help="relative mode's neutral driver frame: the first (default; cam: median), the most frontal "
        "of the first second, or the median face of the first two seconds (outvotes a hand, a blink or "
        "a word in the first frames)",
    )
    p.add_argument("--size", type=int, default=256, help="working resolution of the flow (default 256)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    add_generator_arguments(p)


def _edits(args: argparse.Namespace) -> Edits:
    return Edits(**{f.name: getattr(args, f.name) for f in fields(Edits)})


def _config(args: argparse.Namespace):
    from rt_portrait.head.types import RetargetConfig
    from rt_portrait.pipeline import AnimatorConfig

    strengths = Strengths(**{f.name: getattr(args, f"strength_{f.name}") for f in fields(Strengths)})
    return AnimatorConfig(
        size=args.size,
        retarget=RetargetConfig(args.mode, strengths, reference=args.reference),
        edits=_edits(args),
        device=args.device,
        **generator_options(args),
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from rt_portrait.demo import run_demo

    paths = run_demo(
        Path(args.output),
        portrait=args.portrait,
        size=args.size,
        seconds=args.seconds,
        generator=generator_options(args),
    )
    for p in paths:
        print(p)
    return 0


def cmd_track(args: argparse.Namespace) -> int:
    from rt_portrait.track_cli import track_file

    rows = track_file(Path(args.input), every=args.every, max_frames=args.max_frames)
    if args.json:
        json.dump(rows, sys.stdout, indent=None if len(rows) > 1 else 2)
        print()
    else:
        for r in rows:
            if r["found"]:
                print(
                    f"frame {r['frame']:5d}  yaw {r['yaw']:+6.1f}  pitch {r['pitch']:+6.1f}  roll {r['roll']:+6.1f}  scale {r['scale']:7.1f}  expr {r['expression']:.4f}"
                )
            else:
                print(f"frame {r['frame']:5d}  no face ({r['message']})")
    return 0


def cmd_edit(args: argparse.Namespace) -> int:
    from rt_portrait.animate import edit_file

    print(edit_file(Path(args.source), Path(args.output), _config(args)))
    return 0


def cmd_animate(args: argparse.Namespace) -> int:
    from rt_portrait.animate import DriverCoverage, NoDriverFaceError, animate_file

    coverage = DriverCoverage()
    try:
        path = animate_file(
            Path(args.source),
            Path(args.driver),
            Path(args.output),
            _config(args),
            max_frames=args.max_frames,
            progress=not args.quiet,
            coverage=coverage,
        )
    except NoDriverFaceError as e:
        print(f"rt-portrait animate: error: {e}", file=sys.stderr)
        return 1
    print(path)
    missing = coverage.frames - coverage.with_face
    if missing:
        print(
            f"rt-portrait animate: warning: {missing} of {coverage.frames} driver frames had no face "
            "(the avatar held its last motion there, then eased back to neutral)",
            file=sys.stderr,
        )
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from rt_portrait.benchmark import run_stage_benchmark

    report = run_stage_benchmark(
        size=args.size,
        device=args.device,
        frames=args.frames,
        flow_backend=args.flow_backend,
        generator=generator_options(args),
    )
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(report["table"])
    return 0


def cmd_cam(args: argparse.Namespace) -> int:
    from rt_portrait.cam import CamConfig, CamError, run_cam

    config = CamConfig(
        source=args.source,
        camera=args.camera,
        output=args.output,
        fps=args.fps,
        animator=_config(args),
        output_size=args.output_size,
        virtual_device=args.virtual_device,
        max_frames=args.max_frames,
        status=not args.quiet,
        hotkeys=not args.no_hotkeys,
    )
    try:
        report = run_cam(config)
    except CamError as e:  # devices, files, portrait: one line that names the fix
        print(f"rt-portrait cam: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl-C outside the frame loop (the loop itself stops cleanly)
        print("rt-portrait cam: interrupted", file=sys.stderr)
        return 130
    print(report.output)
    print(
        f"{report.frames_in} frames animated ({report.fps:.1f} fps, {report.dropped} stale dropped, "
        f"face in {report.face_frames}), {report.frames_out} {report.width}x{report.height} frames out; "
        f"stopped: {report.stopped}",
        file=sys.stderr,
    )
    if report.frames_in and not report.face_frames:
        print(
            "rt-portrait cam: warning: no face in any camera frame, so the avatar held its neutral pose "
            "(face the camera, with light on your face)",
            file=sys.stderr,
        )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rt-portrait", description="Real-time portrait animation.")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own, one per core; for serve, the cores but one "
        "shared among its --max-sessions, at least 1, as its sessions run side by side)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("demo", help="animate the embedded default portrait with a scripted motion")
    p.add_argument(
        "-o", "--output", default="rt-portrait-demo", help="output folder (default ./rt-portrait-demo)"
    )
    p.add_argument(
        "--portrait",
        default="astronaut",
        choices=["astronaut", "grace_hopper"],
        help="the embedded portrait to animate (default astronaut)",
    )
    p.add_argument("--size", type=int, default=256, help="working resolution of the flow (default 256)")
    p.add_argument("--seconds", type=float, default=6.0, help="length of the scripted motion (default 6)")
    add_generator_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("track", help="track faces in an image or video and print the head pose per frame")
    p.add_argument("input", help="an image or a video file")
    p.add_argument("--json", action="store_true", help="print JSON (one list of per-frame rows)")
    p.add_argument("--every", type=int, default=1, help="report every Nth frame (default 1: all)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.set_defaults(func=cmd_track)

    p = sub.add_parser("edit", help="edit the head of a still portrait")
    p.add_argument("--source", required=True, help="the portrait image")
    p.add_argument("-o", "--output", required=True, help="the edited image (PNG, JPEG...)")
    _add_motion_args(p)
    _add_edit_args(p)
    p.set_defaults(func=cmd_edit)

    p = sub.add_parser("animate", help="animate a portrait with a driver video (keeps its audio and fps)")
    p.add_argument("--source", required=True, help="the portrait image")
    p.add_argument("--driver", required=True, help="the driver video (its face's motion is transferred)")
    p.add_argument("-o", "--output", required=True, help="the animated video (.mp4, .mov or .m4v)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many driver frames")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_motion_args(p)
    _add_edit_args(p)
    p.set_defaults(func=cmd_animate)

    p = sub.add_parser(
        "cam",
        help="the avatar as a virtual camera for call apps (Zoom, Meet, Teams, Discord, OBS), or recorded",
        description="Animate a portrait with your webcam and send it to a virtual camera (v4l2loopback on "
        "Linux, OBS Virtual Camera on Windows and macOS) or record it. Keys while it runs: r recalibrate "
        "neutral, g toggle the generator, q quit.",
    )
    p.add_argument("--source", required=True, help="the portrait image")
    p.add_argument(
        "--camera",
        default="0",
        help="webcam index or device (0, /dev/videoN; 'video=Name' on Windows), or a video file "
        "(the run ends at its end); default 0",
    )
    p.add_argument(
        "-o",
        "--output",
        default="virtual",
        help="'virtual' (default): the virtual camera; or FILE.mp4 to record the avatar "
        "(a video-file camera keeps its audio and fps)",
    )
    p.add_argument("--fps", type=float, default=30.0, help="output frame rate (default 30)")
    p.add_argument(
        "--output-size", type=int, default=None, help="long side of the output frames (default: --size)"
    )
    p.add_argument(
        "--virtual-device",
        default=None,
        help="the virtual camera device, e.g. /dev/video10 (default: the first)",
    )
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many camera frames")
    p.add_argument("--quiet", action="store_true", help="no live status line")
    p.add_argument("--no-hotkeys", action="store_true", help="do not read keys from the terminal")
    _add_motion_args(p)
    _add_edit_args(p)
    # a live camera starts wherever the user happens to be: the median face, not the first frame
    p.set_defaults(func=cmd_cam, reference="median")

    p = sub.add_parser("bench", help="median milliseconds per stage on a real face video")
    p.add_argument("--size", type=int, default=256, help="working resolution (default 256)")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="torch device (default cpu)")
    p.add_argument(
        "--flow-backend",
        default="auto",
        choices=["auto", "torch", "triton"],
        help="the flow stage's kernels (the generator network's engine is --backend)",
    )
    p.add_argument("--frames", type=int, default=120, help="driver frames to time (default 120)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    add_generator_arguments(p)
    p.set_defaults(func=cmd_bench)

    from rt_portrait.eval import harness

    p = sub.add_parser("eval", help="self-reenactment evaluation on a folder of videos")
    harness.add_arguments(p)
    p.set_defaults(func=harness.run_from_args)

    from rt_portrait.export import cli as export_cli

    p = sub.add_parser("export", help="export the generator: ONNX files (onnx), TensorRT engines (tensorrt)")
    export_cli.add_arguments(p)
    p.set_defaults(func=export_cli.run_from_args)

    from rt_portrait.server import app as server_app

    p = sub.add_parser("serve", help="live avatar server (WebRTC page, WHIP/WHEP)")
    server_app.add_arguments(p)
    p.set_defaults(func=server_app.run_from_args)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    import torch

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        # SIGTERM unwinds like Ctrl-C (no .part file is left behind); serve and cam handle it themselves
        with raise_on_sigterm(Terminated):
            return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # user-facing errors (bad files, no face, bad ranges) end with a clear message, not a trace
        print(f"rt-portrait {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C: outputs in progress were removed on the way out
        print(f"rt-portrait {args.command}: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print(f"rt-portrait {args.command}: terminated (SIGTERM)", file=sys.stderr)
        return 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that partial outputs are removed on the way out."""


if __name__ == "__main__":
    sys.exit(main())
