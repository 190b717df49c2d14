"""One command for a GPU machine: every GPU measurement of the project, one JSON and one table.

    pip install -e ".[gpu,export,tensorrt]" onnxruntime-gpu   # once, on the GPU machine
    python bench/gpu_suite.py                      # on an H100/H200 (a 390 s budget keeps it under 8 min)
    python bench/gpu_suite.py --out gpu.json       # JSON there, the table beside it (.md)
    python bench/gpu_suite.py --dry-run            # every code path on the CPU at tiny sizes

Sections (each timed; a section that would overrun ``--budget-s`` is skipped and says so):

1. ``flow``: the Triton flow kernels against their torch twins on the same GPU, at 256 and
   512 (median ms, speed-up, and the largest flow difference between the two);
2. ``generator``: the 1-step generator under every backend that builds here (eager fp16
   autocast, ``torch.compile`` with CUDA graphs, ONNX Runtime CUDA with I/O binding,
   TensorRT fp16) at 256 and 512, batch 1, 4 and 8 (ms per call and per face);
3. ``loop``: the whole animate loop at 512 (tracking to composed frame) on a real clip, with
   the backend the resolver picks;
4. ``ort_parity``: ONNX Runtime CUDA against torch float32 on a real condition (max abs, PSNR);
5. ``cupy``: the CuPy I420 <-> RGB and compose kernels against their NumPy twins.

On a machine without a CUDA GPU it says so, writes a JSON whose ``status`` says it measured
nothing, and exits 0 (``--dry-run`` runs the same code on the CPU instead, at 64 px).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch


@dataclass
class Plan:
    device: str
    sizes: tuple[int, ...]
    batches: tuple[int, ...]
    loop_size: int
    loop_frames: int
    iters: int
    backends: tuple[str, ...]
    dry_run: bool


@dataclass
class Suite:
    plan: Plan
    budget_s: float
    t0: float = field(default_factory=time.perf_counter)
    results: dict[str, Any] = field(default_factory=dict)
    table: list[str] = field(default_factory=list)
    out: Path | None = None  # written after every section: a killed run keeps what it measured

    def left(self) -> float:
        return self.budget_s - (time.perf_counter() - self.t0)

    def section(self, name: str, fn: Callable[[], Any], needs_s: float) -> None:
        if self.left() < needs_s:
            self.results[name] = {"skipped": f"time budget: {self.left():.0f} s left, needs ~{needs_s:.0f} s"}
            self.table.append(f"\n## {name}: skipped (time budget)")
            return
        t = time.perf_counter()
        try:
            self.results[name] = fn()
        except Exception as e:  # one broken section must not lose the others' numbers
            self.results[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc(limit=4)}
            self.table.append(f"\n## {name}: ERROR {type(e).__name__}: {e}")
        self.results.setdefault("section_s", {})[name] = round(time.perf_counter() - t, 1)
        self.save()

    def save(self) -> None:
        if self.out is None:
            return
        self.results["wall_s"] = round(time.perf_counter() - self.t0, 1)
        for path, text in (
            (self.out, json.dumps(self.results, indent=2, default=str)),
            (self.out.with_suffix(".md"), "\n".join(self.table) + "\n"),
        ):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            tmp.replace(path)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def median_ms(fn: Callable[[], Any], device: str, iters: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t) * 1e3)
    return float(np.median(times))


def environment(device: str) -> dict[str, Any]:
    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "cpu": platform.processor() or platform.machine(),
    }
    for mod in ("triton", "onnxruntime", "tensorrt", "cupy"):
        try:
            m = __import__(mod)
            env[mod] = getattr(m, "__version__", "?")
        except Exception as e:  # ImportError, or OSError for TensorRT bindings without libraries
            env[mod] = f"unavailable ({type(e).__name__})"
    try:
        import onnxruntime

        env["ort_providers"] = onnxruntime.get_available_providers()
    except ImportError:
        pass
    return env


# ---------------------------------------------------------------- sections


def flow_section(s: Suite) -> dict[str, Any]:
    from rt_portrait.compose import choose_window
    from rt_portrait.core.assets import default_portrait, default_portrait_landmarks
    from rt_portrait.flow import FlowConfig, compute_flow, source_background_visibility, source_visibility
    from rt_portrait.flow.scene import SceneBuilder
    from rt_portrait.head import apply_edits, build_shell, fit_head, load_template
    from rt_portrait.head.types import Edits

    p = s.plan
    img = default_portrait("astronaut")
    landmarks = default_portrait_landmarks("astronaut")  # packaged: GPU machines may lack mediapipe
    tpl = load_template()
    state = fit_head(landmarks, img.shape[:2], template=tpl)
    target_state = apply_edits(state, Edits(yaw=12.0, jaw_open=0.6), tpl)
    backends = ("triton", "torch") if not p.dry_run else ("torch",)
    out: dict[str, Any] = {}
    s.table.append("\n## flow: Triton kernels vs torch twins\n")
    s.table.append("| size | backend | ms | speed-up | max flow diff px |\n|---|---|---|---|---|")
    for size in p.sizes:
        window = choose_window(landmarks, img.shape[:2], size)
        builder = SceneBuilder(
            tpl, build_shell(tpl), window, img.shape[:2], device=p.device,
            head_scale=state.pose.scale, anchor_pose=state.pose,
        )  # fmt: skip
        source, target = builder(state), builder(target_state)
        fields: dict[str, Any] = {}
        row: dict[str, float] = {}
        for backend in backends:
            cfg = FlowConfig(size=size, backend=backend)
            vis = source_visibility(source, cfg)
            bg = source_background_visibility(source, cfg)

            def run(cfg=cfg, vis=vis, bg=bg, target=target, source=source) -> Any:
                return compute_flow(target, source, cfg, source_visible=vis, source_background=bg)

            fields[backend] = run()
            row[backend] = median_ms(run, p.device, p.iters)
        diff = float((fields[backends[0]].flow - fields["torch"].flow).abs().max())
        speed = row["torch"] / row[backends[0]]
        out[str(size)] = {"ms": row, "speedup": speed, "max_flow_diff_px": diff}
        for b in backends:
            s.table.append(
                f"| {size} | {b} | {row[b]:.3f} | {row['torch'] / row[b]:.1f}x | {diff if b != 'torch' else 0:.2e} |"
            )
    return out


def _weights(tmp: Path) -> tuple[Path, str]:
    from rt_portrait.generator.diffusion import DEFAULT_WEIGHTS, save_weights
    from rt_portrait.generator.unet import ConditionalUNet

    if DEFAULT_WEIGHTS.is_file():
        return DEFAULT_WEIGHTS, f"shipped {DEFAULT_WEIGHTS.name}"
    torch.manual_seed(0)
    unet = ConditionalUNet()
    torch.nn.init.normal_(unet.out.weight, std=0.05)
    path = tmp / "random.safetensors"
    save_weights(unet, path, residual_scale=2.0)
    return path, "random init (no shipped weights)"


def _engine(name: str, weights: Path, plan: Plan, cache: Path) -> Any:
    from rt_portrait.engines.graph import load_graph
    from rt_portrait.engines.resolver import EngineConfig, engine_factories

    loaded = load_graph(weights, device=plan.device)
    config = EngineConfig(
        backend=name, device=plan.device, cache_dir=cache, threads=1 if plan.device == "cpu" else None
    )
    engine = engine_factories(loaded, config)[name]()
    return engine, loaded


def generator_section(s: Suite, weights: Path, cache: Path) -> dict[str, Any]:
    from rt_portrait.engines.base import BackendUnavailable
    from rt_portrait.engines.resolver import parity_stats, probe_inputs

    p = s.plan
    out: dict[str, Any] = {}
    s.table.append("\n## generator (1 step): ms per call (ms per face)\n")
    s.table.append(
        "| backend | "
        + " | ".join(f"{r} b{b}" for r in p.sizes for b in p.batches)
        + " | build s | PSNR vs fp32 |"
    )
    s.table.append("|---" * (2 + len(p.sizes) * len(p.batches) + 1) + "|")
    for name in p.backends:
        if s.left() < 60:  # an engine build alone can take a minute
            out[name] = {"skipped": "time budget"}
            s.table.append(f"| {name} | skipped: time budget |")
            continue
        t = time.perf_counter()
        try:
            engine, loaded = _engine(name, weights, p, cache)
        except BackendUnavailable as e:
            out[name] = {"unavailable": f"{e.reason}: {e.detail}"}
            s.table.append(f"| {name} | unavailable: {e.reason} ({e.detail[:60]}) |")
            continue
        cells, res, psnr = [], {}, None
        for size in p.sizes:
            if s.left() < 45:
                cells += ["budget"] * len(p.batches)
                continue
            engine.prepare(size)
            for b in p.batches:
                if s.left() < 30:
                    cells.append("budget")
                    continue
                cond, noise = probe_inputs(40, size, torch.device(p.device), b)
                ms = median_ms(
                    lambda cond=cond, noise=noise, engine=engine: engine(cond, noise), p.device, p.iters
                )
                res[f"{size}x{b}"] = {"ms": ms, "ms_per_face": ms / b}
                cells.append(f"{ms:.2f} ({ms / b:.2f})")
                if b == p.batches[0] and size == p.sizes[0]:
                    with torch.inference_mode():
                        ref = loaded.graph(cond, noise)
                    psnr = parity_stats(engine(cond, noise), ref)["psnr"]
        build = time.perf_counter() - t
        out[name] = {"engine": engine.describe(), "timings": res, "wall_s": build, "psnr_vs_fp32": psnr}
        s.table.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {build:.0f} | {psnr if psnr is None else round(psnr, 1)} |"
        )
    return out


def loop_section(s: Suite, weights: Path, cache: Path) -> dict[str, Any]:
    from rt_portrait.core.assets import default_portrait, pyfeat_file
    from rt_portrait.core.video import read_frames
    from rt_portrait.engines.generator import with_backend
    from rt_portrait.engines.resolver import EngineConfig
    from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator
    from rt_portrait.pipeline import Animator, AnimatorConfig
    from rt_portrait.tracking import fit_long_side

    p = s.plan
    size = p.loop_size
    frames = [
        fit_long_side(f, size)
        for f in read_frames(pyfeat_file("WolfgangLanger_Pexels.mp4"), max_frames=p.loop_frames)
    ]
    diffusion = DiffusionGenerator(DiffusionConfig(weights=weights, device=p.device))
    gen = with_backend(diffusion, size, EngineConfig(device=p.device, cache_dir=cache, probe_runs=3))
    animator = Animator(
        fit_long_side(default_portrait("astronaut"), size),
        AnimatorConfig(size=size, device=p.device),
        generator=gen,
    )
    session = animator.session(fps=24.0)
    samples: dict[str, list[float]] = {}
    for i, f in enumerate(frames):
        o = session(f)
        _sync(p.device)
        if i >= 5:
            for k, v in o.timings_ms.items():
                samples.setdefault(k, []).append(v)
    session.close()
    med = {k: float(np.median(v)) for k, v in samples.items()}
    s.table.append(f"\n## whole loop at {size} (backend {gen.engine.describe()})\n")
    s.table.append("| " + " | ".join(med) + " | fps |\n|" + "---|" * (len(med) + 1))
    s.table.append("| " + " | ".join(f"{v:.2f}" for v in med.values()) + f" | {1000 / med['total']:.1f} |")
    return {"size": size, "median_ms": med, "fps": 1000 / med["total"], "backend": gen.summary()}


def ort_parity_section(s: Suite, weights: Path, cache: Path) -> dict[str, Any]:
    from rt_portrait.engines.graph import load_graph
    from rt_portrait.engines.onnx_export import cached_onnx
    from rt_portrait.engines.ort import OrtEngine
    from rt_portrait.engines.resolver import parity_stats, probe_inputs

    p = s.plan
    out: dict[str, Any] = {}
    size = p.sizes[-1]
    loaded = load_graph(weights)
    info = cached_onnx(loaded, size, cache)
    engine = OrtEngine(lambda _size: info, p.device)
    cond, noise = probe_inputs(40, size, torch.device(p.device), 2)
    loaded.graph.to(p.device)
    with torch.inference_mode():
        ref = loaded.graph(cond, noise)
    stats = parity_stats(engine(cond, noise), ref)
    out = {
        "provider": engine.provider,
        "size": size,
        **stats,
        "pass": stats["max_abs"] <= 2e-3 and stats["psnr"] >= 45,
    }
    s.table.append(
        f"\n## ONNX Runtime {engine.provider} parity at {size}, batch 2: max abs {stats['max_abs']:.2e}, "
        f"PSNR {stats['psnr']:.1f} dB ({'pass' if out['pass'] else 'FAIL'}: <= 2e-3, >= 45 dB)"
    )
    return out


def cupy_section(s: Suite) -> dict[str, Any]:
    from rt_portrait.core.assets import default_portrait
    from rt_portrait.engines import cupy_kernels as ck

    img = np.ascontiguousarray(default_portrait("astronaut")[:512, :512])
    dev = torch.device("cuda")
    t_rgb = torch.from_numpy(img).to(dev)
    yuv = ck.rgb_to_i420_cuda(t_rgb)
    ok_fwd = bool(np.array_equal(yuv.cpu().numpy(), ck.rgb_to_i420_numpy(img)))
    back = ck.i420_to_rgb_cuda(yuv, 512, 512)
    ok_back = bool(np.array_equal(back.cpu().numpy(), ck.i420_to_rgb_numpy(yuv.cpu().numpy(), 512, 512)))
    ms_fwd = median_ms(lambda: ck.rgb_to_i420_cuda(t_rgb), "cuda", 50)
    ms_back = median_ms(lambda: ck.i420_to_rgb_cuda(yuv, 512, 512), "cuda", 50)
    frame = torch.rand(3, 512, 512, device=dev)
    face, alpha = torch.rand(3, 256, 256, device=dev), torch.rand(1, 256, 256, device=dev)
    ms_comp = median_ms(lambda: ck.compose_into_cuda(frame, face, alpha, 100, 100), "cuda", 50)
    s.table.append(
        f"\n## CuPy kernels at 512: rgb->i420 {ms_fwd:.3f} ms (twin equal: {ok_fwd}), i420->rgb {ms_back:.3f} ms "
        f"(twin equal: {ok_back}), compose 256 into 512 {ms_comp:.3f} ms"
    )
    return {
        "rgb_to_i420_ms": ms_fwd,
        "i420_to_rgb_ms": ms_back,
        "compose_ms": ms_comp,
        "twins_equal": ok_fwd and ok_back,
    }


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    ap.add_argument("--out", default="gpu_suite.json", help="JSON output (the table goes beside it as .md)")
    ap.add_argument("--dry-run", action="store_true", help="run every code path on the CPU at 64 px")
    ap.add_argument(
        # 390 s leaves room for one build started just before the budget runs out (< 8 min in all)
        "--budget-s",
        type=float,
        default=390.0,
        help="skip what would run past this (default 390)",
    )
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.dry_run:
        plan = Plan("cpu", (64,), (1, 2), 128, 12, 3, ("eager", "onnxruntime"), True)
    elif torch.cuda.is_available():
        plan = Plan(
            "cuda",
            (256, 512),
            (1, 4, 8),
            512,
            120,
            30,
            ("eager", "onnxruntime", "tensorrt", "compile"),  # compile last: per-shape CUDA-graph compiles
            False,
        )
    else:
        msg = "gpu_suite: no CUDA GPU on this machine: nothing measured (use --dry-run to exercise the code on the CPU)"
        print(msg)
        out.write_text(
            json.dumps({"status": "skipped: no CUDA GPU", "environment": environment("cpu")}, indent=2)
        )
        return 0
    suite = Suite(plan, args.budget_s, out=out)
    suite.results["status"] = "incomplete: stopped before its last section"
    suite.results["environment"] = environment(plan.device)
    suite.results["plan"] = plan.__dict__
    suite.table.append(
        f"# rt-portrait GPU suite ({'dry run, CPU' if plan.dry_run else suite.results['environment']['gpu']})"
    )
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "engines"
        weights, note = _weights(Path(tmp))
        suite.results["weights"] = note
        # quick sections first; the generator sweep (engine builds, compiles) takes what is left
        suite.section("flow", lambda: flow_section(suite), needs_s=20)
        if plan.device == "cuda":
            suite.section("cupy", lambda: cupy_section(suite), needs_s=5)
        suite.section("ort_parity", lambda: ort_parity_section(suite, weights, cache), needs_s=10)
        suite.section("loop", lambda: loop_section(suite, weights, cache), needs_s=60)
        suite.section("generator", lambda: generator_section(suite, weights, cache), needs_s=60)
    suite.results["status"] = "dry run (CPU)" if plan.dry_run else "measured"
    suite.table.append(f"\nwall time {round(time.perf_counter() - suite.t0, 1)} s")
    suite.save()
    table = "\n".join(suite.table)
    print(table)
    print(f"\nwrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
