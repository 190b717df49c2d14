"""``python -m rt_portrait.training {cache,train,distill,adversarial,regress,average,evaluate} ...``"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

RUNS = Path.home() / ".cache" / "rt-portrait" / "runs"


def _train_args(p: argparse.ArgumentParser, out: str) -> None:
    from rt_portrait.training.cache import DEFAULT_CACHE

    p.add_argument(
        "--cache", type=Path, default=DEFAULT_CACHE / "train-256", help="cache folder (split-size)"
    )
    p.add_argument("--out", type=Path, default=RUNS / out, help="run folder (ckpt.pt, weights.safetensors)")
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument(
        "--max-minutes", type=float, default=None, help="stop with a checkpoint after this wall time"
    )
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument(
        "--schedule",
        choices=["constant", "cosine"],
        default="constant",
        help="learning rate after warmup: constant, or a cosine to 0 at --steps",
    )
    p.add_argument("--channels", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument(
        "--batches",
        choices=["cpu", "device"],
        default="cpu",
        help="build batches per sample on the CPU, or batched on --device (whole cache loaded there)",
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument(
        "--amp",
        choices=["auto", "none", "bf16"],
        default="auto",
        help="bf16 autocast; auto: on CUDA and on a CPU with bf16 instructions (emulated bf16 is slower)",
    )
    p.add_argument("--ckpt-minutes", type=float, default=3.0)
    p.add_argument("--resume", action="store_true")
    p.add_argument("--ssim-weight", type=float, default=0.5, help="loss = L1 + this x (1 - SSIM)")
    p.add_argument(
        "--pixel-loss",
        choices=["l1", "mse"],
        default="l1",
        help="the per-pixel term: l1, or mse (the flow-matching objective: the conditional mean at "
        "every noise level, which a many-step sampler integrates; a teacher's choice)",
    )
    p.add_argument(
        "--texture-weight", type=float, default=0.0, help="+ this x the texture-energy loss (fine detail)"
    )


def resolve_amp(amp: str, device: str) -> str:
    """``--amp auto``: bf16 where it runs natively (CUDA, a CPU with bf16 instructions), else none."""
    if amp != "auto":
        return amp
    import torch

    from rt_portrait.core.cpu import auto_dtype

    return "none" if auto_dtype(torch.device(device)) == "float32" else "bf16"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m rt_portrait.training", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)

    c = sub.add_parser("cache", help="build the conditioning cache of a split")
    c.add_argument("--data", type=Path, default=Path("/work/shared/data"))
    c.add_argument("--out", type=Path, default=None)
    c.add_argument("--split", default="train")
    c.add_argument("--size", type=int, default=256)
    c.add_argument("--pool", type=int, default=80)
    c.add_argument("--sources", type=int, default=2)
    c.add_argument("--targets", type=int, default=24, help="targets per source, biased to large motion")
    c.add_argument(
        "--near",
        type=int,
        default=0,
        help="per source also the source itself and its NEAR-1 closest frames (still and small motion)",
    )
    c.add_argument(
        "--base",
        choices=("warp", "warp_fill", "warp_mirror"),
        default="warp",
        help="the residual base stored as the warp: the raw warp, or its holes filled by the warp fill "
        "(warp_fill: hair and background by push-pull, as the shipped weights were trained; "
        "warp_mirror: by reflection, today's warp fill)",
    )
    c.add_argument(
        "--skin-follow",
        type=float,
        default=0.25,
        help="how far (face heights) the head shell near the jaw follows it (flow.scene.SceneConfig; 0 = rigid, before session 12)",
    )
    c.add_argument(
        "--mouth",
        choices=("teeth", "strips"),
        default="teeth",
        help="how the base paints a mouth the source keeps shut (teeth: teeth, cavity and tongue, "
        "since session 13; strips: the prior's mean strips, as the shipped weights were trained)",
    )
    c.add_argument(
        "--shell",
        choices=("fitted", "generic"),
        default="fitted",
        help="the skull behind the face the pairs are rendered on (fitted: scaled to each source's "
        "person outline, the warp fill's since session 14; generic: the template's, as the shipped "
        "weights were trained)",
    )
    c.add_argument("--max-clips", type=int, default=None)
    c.add_argument(
        "--export-tracks",
        type=Path,
        default=None,
        metavar="NPZ",
        help="only track the split's pool frames into this file (for a machine that cannot track)",
    )
    c.add_argument(
        "--from-tracks",
        type=Path,
        default=None,
        metavar="NPZ",
        help="render the cache from an --export-tracks file and the videos (OpenCV decodes them)",
    )
    c.add_argument("--workers", type=int, default=1, help="render processes (with --from-tracks)")

    t = sub.add_parser("train", help="teacher: flow matching on the residual over the warp")
    _train_args(t, "teacher")
    t.add_argument(
        "--p-t1", type=float, default=0.2, help="share of each batch at t = 1 (1.0: one-step tuning)"
    )
    t.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from these weights (.safetensors; fresh optimiser), e.g. one-step tuning of shipped weights",
    )
    t.add_argument(
        "--displacement",
        action="store_true",
        help="also learn to displace the base (two flow channels, added at zero; needs --p-t1 1)",
    )
    t.add_argument(
        "--displacement-gain",
        type=float,
        default=1.0,
        help="scale of the added flow channels (learns the displacement this much faster)",
    )
    d = sub.add_parser("distill", help="distil the teacher to a 1- or 2-step student")
    _train_args(d, "student1")
    d.add_argument("--teacher", type=Path, required=True, help="the teacher's weights.safetensors")
    d.add_argument("--student-steps", type=int, default=1)
    d.add_argument("--teacher-steps", type=int, default=8)
    d.add_argument("--gt-weight", type=float, default=0.5)
    a = sub.add_parser("adversarial", help="fine-tune the one-step generator with a patch discriminator")
    _train_args(a, "adversarial")
    a.add_argument("--teacher", type=Path, required=True, help="the weights to start from (the teacher's)")
    a.add_argument("--adv-weight", type=float, default=0.05, help="weight of the adversarial loss")
    a.add_argument("--disc-lr", type=float, default=2e-4, help="the discriminator's learning rate")
    r = sub.add_parser("regress", help="ablation: the same UNet by plain L1 + SSIM regression")
    _train_args(r, "regress")

    av = sub.add_parser("average", help="average several weights files of one run, tensor by tensor")
    av.add_argument("weights", nargs="+", type=Path, help="weights files (e.g. EMA exports at a few steps)")
    av.add_argument("--out", type=Path, required=True, help="the averaged weights file")

    e = sub.add_parser("evaluate", help="face-region metrics on val clips against the warp")
    e.add_argument("weights", nargs="*", type=Path, help="weights files; NAME=PATH[:STEPS] to label")
    e.add_argument("--cache", type=Path, default=None, help="val cache folder (default: <gen-cache>/val-256)")
    e.add_argument("--max-pairs", type=int, default=120)
    e.add_argument("--out", type=Path, default=None, help="write a JSON of the table here")
    e.add_argument("--sheet", type=Path, default=None, help="write a comparison sheet (PNG) here")
    e.add_argument("--threads", type=int, default=1)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.cmd == "cache":
        from rt_portrait.training import cache

        ccfg = cache.CacheConfig(
            data=args.data,
            out=args.out or cache.DEFAULT_CACHE,
            split=args.split,
            size=args.size,
            pool=args.pool,
            sources=args.sources,
            targets=args.targets,
            near=args.near,
            base=args.base,
            skin_follow=args.skin_follow,
            mouth=args.mouth,
            shell=args.shell,
            max_clips=args.max_clips,
        )
        if args.export_tracks and args.from_tracks:
            parser.error("--export-tracks and --from-tracks exclude each other")
        if args.export_tracks:
            cache.export_tracks(ccfg, args.export_tracks)
        elif args.from_tracks:
            cache.build_cache_from_tracks(ccfg, args.from_tracks, workers=args.workers)
        else:
            cache.build_cache(ccfg)
    elif args.cmd in ("train", "distill", "regress", "adversarial"):
        from rt_portrait.training.dataset import AugmentConfig
        from rt_portrait.training.train import TrainConfig, run

        cfg = TrainConfig(
            mode={"train": "teacher"}.get(args.cmd, args.cmd),
            cache=args.cache,
            out=args.out,
            steps=args.steps,
            max_minutes=args.max_minutes,
            batch=args.batch,
            lr=args.lr,
            schedule=args.schedule,
            channels=args.channels,
            seed=args.seed,
            device=args.device,
            batches=args.batches,
            threads=args.threads,
            amp=resolve_amp(args.amp, args.device),
            ckpt_minutes=args.ckpt_minutes,
            resume=args.resume,
            ssim_weight=args.ssim_weight,
            pixel_loss=args.pixel_loss,
            texture_weight=args.texture_weight,
            aug=AugmentConfig(crop=args.crop),
        )
        if args.cmd == "train":
            cfg.p_t1 = args.p_t1
            cfg.init = args.init
            cfg.displacement = args.displacement
            cfg.displacement_gain = args.displacement_gain
        if args.cmd == "distill":
            cfg.teacher = args.teacher
            cfg.student_steps = args.student_steps
            cfg.teacher_steps = args.teacher_steps
            cfg.gt_weight = args.gt_weight
        if args.cmd == "adversarial":
            cfg.teacher = args.teacher
            cfg.adv_weight = args.adv_weight
            cfg.disc_lr = args.disc_lr
        run(cfg)
    elif args.cmd == "average":
        from rt_portrait.training.train import average_weights

        try:
            print(average_weights(args.weights, args.out))
        except (ValueError, FileNotFoundError) as exc:
            parser.error(str(exc))
    elif args.cmd == "evaluate":
        from rt_portrait.training.evaluate import main as evaluate_main

        evaluate_main(args)


if __name__ == "__main__":
    main()
