"""ONNX export of the generator graph: ``(cond, noise) -> face``, one file per working size.

The file is what ONNX Runtime runs and what TensorRT builds from. Its inputs are ``cond``
(N, C, R, R) and ``noise`` (N, 3, R, R), its output ``face`` (N, 3, R, R), all float32 with a
dynamic batch N; the spatial size is fixed (TensorRT's profiles are per size). Metadata
(``onnx`` ``metadata_props``): the weights' hash, the channel layout, the size, the steps,
the sampler, the fusion weights and the compute precision.

The exporter is torch's TorchScript-based one (``dynamo=False``): it needs nothing beyond
torch and onnx (the dynamo exporter needs ``onnxscript``), and it unrolls the sampler's
Python loop into straight-line ops, which is the point.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from rt_portrait.engines.graph import CHANNEL_LAYOUT, LoadedGraph, file_hash

OPSET = 17
INPUTS = ("cond", "noise")
OUTPUT = "face"


@dataclass(frozen=True)
class OnnxInfo:
    """What an exported file declares about itself (its metadata, parsed)."""

    path: Path
    size: int
    steps: int
    sampler: str
    precision: str
    weights_hash: str
    channel_layout: str
    cond_channels: int
    onnx_hash: str
    metadata: dict[str, str]


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
    except ImportError as e:
        raise ImportError(
            "ONNX export needs the onnx package: pip install 'rt-portrait[export]' (or pip install onnx)"
        ) from e


def export_onnx(
    loaded: LoadedGraph,
    path: str | Path,
    size: int,
    opset: int = OPSET,
    batch: int = 1,
) -> OnnxInfo:
    """Export ``loaded.graph`` at working size ``size`` to ``path``, check it with
    ``onnx.checker`` and write its metadata. Returns the file's parsed metadata."""
    _require_onnx()
    import onnx

    if opset < 17:
        raise ValueError(f"opset must be 17 or newer (GroupNorm-era ops, TensorRT 10+), got {opset}")
    if loaded.graph.compute_dtype == torch.bfloat16:
        opset = max(opset, 22)  # bfloat16 Conv and friends entered ONNX in opset 22
    if size % 8:
        raise ValueError(f"the UNet needs a size divisible by 8, got {size}")
    graph = loaded.graph.eval()
    device = next(graph.parameters()).device
    nc = graph.unet.config.cond_channels
    cond = torch.zeros(batch, nc, size, size, device=device)
    noise = torch.zeros(batch, 3, size, size, device=device)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with warnings.catch_warnings(), torch.no_grad():
        # the UNet's shape checks are Python conditions on traced shapes (constant for a fixed
        # size, which is what we export); the TorchScript exporter's deprecation is known
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        # bf16 needs opset 22, above the TorchScript exporter's declared 20; its ops are
        # unchanged there except for the added types, and onnx.checker verifies the result
        warnings.filterwarnings("ignore", message="Exporting to ONNX opset version")
        torch.onnx.export(
            graph,
            (cond, noise),
            str(tmp),
            dynamo=False,
            opset_version=opset,
            input_names=list(INPUTS),
            output_names=[OUTPUT],
            dynamic_axes={"cond": {0: "batch"}, "noise": {0: "batch"}, OUTPUT: {0: "batch"}},
            do_constant_folding=True,
        )
    model = onnx.load(str(tmp))
    # the tracer leaves the output's channel dim symbolic when the graph concatenates (a
    # displacing model's face and displacement): pin (C, R, R), which runtimes size buffers by
    for dim, value in zip(
        model.graph.output[0].type.tensor_type.shape.dim[1:], (graph.out_channels, size, size), strict=True
    ):
        dim.ClearField("dim_param")
        dim.dim_value = value
    spec = graph.spec
    meta = {
        "rt_portrait.format": "rt-portrait-generator-onnx-v1",
        "rt_portrait.weights_hash": loaded.weights_hash,
        "rt_portrait.weights_file": loaded.weights.name,
        "rt_portrait.channel_layout": CHANNEL_LAYOUT,
        "rt_portrait.cond_channels": str(nc),
        "rt_portrait.out_channels": str(graph.out_channels),
        "rt_portrait.size": str(size),
        "rt_portrait.steps": str(spec.steps),
        "rt_portrait.sampler": spec.sampler,
        "rt_portrait.fusion": json.dumps([spec.motion_weight, spec.identity_weight]),
        "rt_portrait.precision": {
            torch.float32: "float32",
            torch.float16: "float16",
            torch.bfloat16: "bfloat16",
        }[graph.compute_dtype],
        "rt_portrait.residual_scale": repr(graph.residual_scale),
        "rt_portrait.prediction": graph.prediction,
    }
    del model.metadata_props[:]
    for k, v in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, v
    model.producer_name = "rt-portrait"
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    tmp.unlink(missing_ok=True)
    return read_onnx_info(path)


def read_onnx_info(path: str | Path) -> OnnxInfo:
    """Parse an exported file's metadata; ValueError if it is not an rt-portrait generator."""
    _require_onnx()
    import onnx

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX file not found: {path}")
    model = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    if meta.get("rt_portrait.format") != "rt-portrait-generator-onnx-v1":
        raise ValueError(f"{path}: not an rt-portrait generator export (no rt_portrait.format metadata)")
    return OnnxInfo(
        path=path,
        size=int(meta["rt_portrait.size"]),
        steps=int(meta["rt_portrait.steps"]),
        sampler=meta["rt_portrait.sampler"],
        precision=meta["rt_portrait.precision"],
        weights_hash=meta["rt_portrait.weights_hash"],
        channel_layout=meta["rt_portrait.channel_layout"],
        cond_channels=int(meta["rt_portrait.cond_channels"]),
        onnx_hash=file_hash(path),
        metadata=meta,
    )


def cached_onnx(loaded: LoadedGraph, size: int, cache_dir: Path) -> OnnxInfo:
    """The export of ``loaded`` at ``size`` from ``cache_dir``, exported once (keyed by the
    weights' hash and everything folded into the graph)."""
    g = loaded.graph
    spec = g.spec
    key = (
        f"generator_{loaded.weights_hash}_s{spec.steps}{spec.sampler}_m{spec.motion_weight:g}_i{spec.identity_weight:g}"
        f"_{str(g.compute_dtype).removeprefix('torch.')}_{size}.onnx"
    )
    path = cache_dir / key
    if path.is_file():
        try:
            return read_onnx_info(path)
        except Exception:  # a truncated file from an interrupted run: export again
            path.unlink(missing_ok=True)
    return export_onnx(loaded, path, size)
