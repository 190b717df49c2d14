"""``rt-portrait export onnx|tensorrt``: write the generator's ONNX file(s) or TensorRT engine(s).

    rt-portrait export onnx --size 256 [--steps 1] -o generator.onnx
    rt-portrait export tensorrt --size 128 256 512 --precision fp16 [-o DIR]

``onnx`` writes one file per working size: ``(cond, noise) -> face`` with the sampler's steps
folded in, opset 17+ with a dynamic batch, checked by ``onnx.checker``, its metadata holding
the weights' hash, the channel layout and the size; with ``--verify`` it also runs ONNX
Runtime's CPU provider against torch on a probe condition and prints the max abs difference
and the PSNR. ``tensorrt`` exports at the precision asked (fp16/bf16 inside, float32 I/O) and
builds one engine per size (batch 1-8 profile, timing cache, engine cache keyed by the ONNX
hash, the TensorRT version, the GPU and the precision); it needs a CUDA GPU and TensorRT.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rt_portrait.engines.graph import GeneratorGraph, GraphSpec, load_graph
from rt_portrait.engines.onnx_export import OPSET, export_onnx
from rt_portrait.engines.resolver import default_cache_dir, parity_stats, probe_inputs


def _common(p: argparse.ArgumentParser, sizes_default: list[int]) -> None:
    p.add_argument(
        "--size", type=int, nargs="+", default=sizes_default, help="working size(s); one file per size"
    )
    p.add_argument("--steps", type=int, default=1, help="sampling steps folded into the graph (default 1)")
    p.add_argument("--sampler", default="euler", help="sampler (euler or heun)")
    p.add_argument("--motion-weight", type=float, default=1.0, help="fusion weight folded into the graph")
    p.add_argument("--identity-weight", type=float, default=1.0, help="fusion weight folded into the graph")
    p.add_argument(
        "--weights", default=None, metavar="FILE", help="generator weights (default: the shipped ones)"
    )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="export_format", required=True)
    p = sub.add_parser("onnx", help="export the generator graph to ONNX (one file per size)")
    _common(p, [256])
    p.add_argument(
        "-o",
        "--output",
        required=True,
        help="output .onnx file (with several sizes: _<size> is added to the name)",
    )
    p.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (>= 17, default {OPSET})")
    p.add_argument(
        "--precision",
        default="fp32",
        choices=["fp32", "fp16", "bf16"],
        help="compute precision inside the graph (inputs and output stay float32; fp16/bf16 are for TensorRT)",
    )
    p.add_argument(
        "--verify", action="store_true", help="ONNX Runtime CPU vs torch parity on a probe condition"
    )
    p.set_defaults(export_func=run_onnx)

    p = sub.add_parser("tensorrt", help="build TensorRT engines from the ONNX export (needs a CUDA GPU)")
    _common(p, [128, 256, 512])
    p.add_argument(
        "--precision",
        default="fp16",
        choices=["fp16", "bf16", "fp32"],
        help="engine precision (default fp16; inputs and output stay float32)",
    )
    p.add_argument(
        "-o", "--output", default=None, help="engine cache folder (default <rt-portrait cache>/engines)"
    )
    p.add_argument(
        "--max-batch", type=int, default=8, help="largest batch of the optimization profile (default 8)"
    )
    p.add_argument("--force", action="store_true", help="rebuild even when the engine cache has the engine")
    p.set_defaults(export_func=run_tensorrt)


def _spec(args: argparse.Namespace) -> GraphSpec:
    return GraphSpec(
        steps=args.steps,
        sampler=args.sampler,
        motion_weight=args.motion_weight,
        identity_weight=args.identity_weight,
    )


def _weights(args: argparse.Namespace) -> str | Path | None:
    if args.weights is not None:
        return args.weights
    from rt_portrait.generator import diffusion

    pick = getattr(diffusion, "default_weights", None)
    return pick(args.steps) if pick is not None else None


def run_onnx(args: argparse.Namespace) -> int:
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.precision]
    loaded = load_graph(_weights(args), _spec(args), "cpu", compute_dtype=dtype)
    out = Path(args.output)
    for size in args.size:
        path = out if len(args.size) == 1 else out.with_name(f"{out.stem}_{size}{out.suffix or '.onnx'}")
        info = export_onnx(loaded, path, size, opset=args.opset)
        row: dict[str, object] = {
            "path": str(info.path),
            "size": info.size,
            "steps": info.steps,
            "precision": info.precision,
            "weights_hash": info.weights_hash,
            "onnx_hash": info.onnx_hash,
            "bytes": info.path.stat().st_size,
        }
        if args.verify:
            row["parity_cpu"] = verify_onnx(loaded.graph, info.path, size)
        print(json.dumps(row))
    return 0


def verify_onnx(graph: GeneratorGraph, path: Path, size: int, batch: int = 2) -> dict[str, float]:
    """ONNX Runtime CPU vs the torch graph on a seeded probe (max abs, PSNR)."""
    from rt_portrait.engines.ort import OrtEngine

    engine = OrtEngine.from_files([path])
    cond, noise = probe_inputs(graph.unet.config.cond_channels, size, torch.device("cpu"), batch)
    with torch.inference_mode():
        want = graph(cond, noise)
    return parity_stats(engine(cond, noise), want)


def run_tensorrt(args: argparse.Namespace) -> int:
    from rt_portrait.engines.base import BackendUnavailable
    from rt_portrait.engines.trt import build_engine, export_for_tensorrt, import_tensorrt

    try:
        import_tensorrt()  # a clear "package missing" before anything is exported
    except BackendUnavailable as e:
        raise ValueError(f"export tensorrt: {e}") from e
    if not torch.cuda.is_available():
        raise ValueError(
            "export tensorrt: no CUDA GPU on this machine (TensorRT builds for the GPU it runs on)"
        )
    cache = Path(args.output) if args.output else default_cache_dir()
    loaded = load_graph(_weights(args), _spec(args), "cpu")
    for size in args.size:
        info = export_for_tensorrt(loaded, size, args.precision, cache)
        plan = build_engine(info.path, cache / "tensorrt", max_batch=args.max_batch, force=args.force)
        print(
            json.dumps(
                {"size": size, "precision": info.precision, "onnx": str(info.path), "engine": str(plan)}
            )
        )
    return 0


def run_from_args(args: argparse.Namespace) -> int:
    return int(args.export_func(args))
