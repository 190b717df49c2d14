"""Teacher training (flow matching), distillation to 1 and 2 steps, and plain regression.

All three share one loop (:func:`run`): random crops of the cache, condition dropout per
group, AdamW, an EMA of the weights, a checkpoint every ``ckpt_minutes`` (model, EMA,
optimiser, step, and the states of the numpy and torch generators that draw batches, noise
and times, so ``--resume`` continues the same run) and, at each checkpoint, the EMA weights
exported as safetensors (``<out>/weights.safetensors``) for :class:`DiffusionGenerator`.

Modes:

- ``teacher``: flow matching on the residual over the warp, x0 = residual_scale * (target -
  warped) (images in [-1, 1]); x_t = (1 - t) x0 + t eps; the network predicts x0 itself
  (sampled with v = (x_t - x0) / t, see :mod:`rt_portrait.generator.diffusion` for why), with
  L1 + SSIM in image space, weighted up on the head. t is uniform, with ``p_t1`` of the batch
  at t = 1 exactly (the one-step start). ``--p-t1 1`` resumed from a teacher is one-step
  tuning: all of the model's capacity goes to the one step the runtime samples.
- ``distill``: a student initialised from the teacher learns to reach, in ``student_steps``
  Euler steps from the same noise, the teacher's ``teacher_steps``-step sample (L1 + SSIM in
  image space), plus ``gt_weight`` x the same loss to the real frame.
- ``adversarial``: adversarial fine-tuning of the one-step generator, initialised from the
  teacher: its one-step output (x0 predicted at t = 1 from the noise) is trained with the
  teacher's L1 + SSIM to the real frame plus ``adv_weight`` x a hinge loss against a small
  patch discriminator (:mod:`.discriminator`) that sees the image with its warp. The
  regression losses alone give the conditional mean, which is blurred wherever the answer is
  uncertain (revealed cheeks, teeth); the discriminator penalises that blur.
- ``regress``: the ablation: the same UNet from zeros at t = 1, trained to output the
  residual directly with L1 + SSIM (no noise), saved with prediction = "regression".

Same command on CUDA: ``--device cuda``. Batches are built on the CPU and moved by default
(``--batches cpu``, one sample at a time, ~28 ms each); ``--batches device`` loads the whole
cache onto the device once (:class:`~.dataset.DeviceCache`, ~3.8 MB a pair at 256^2) and
builds each batch there with :func:`~.dataset.make_batch_device`, from a torch generator
whose state the checkpoint holds. The two draw different (equally distributed) batches.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from rt_portrait.generator.conditioning import drop_groups
from rt_portrait.generator.diffusion import displaced_face, displacement_field, load_weights, save_weights
from rt_portrait.generator.sampling import interpolate, sample_euler, schedule, x0_to_velocity
from rt_portrait.generator.unet import ConditionalUNet, UNetConfig, add_flow_channels
from rt_portrait.training.cache import (
    cache_background_seen,
    cache_base,
    cache_fringe,
    cache_mouth,
    cache_shell,
    cache_skin_follow,
    cache_source_detail,
)
from rt_portrait.training.dataset import (
    AugmentConfig,
    Batch,
    DeviceCache,
    PairCache,
    make_batch,
    make_batch_device,
)
from rt_portrait.training.discriminator import PatchDiscriminator, hinge_d_loss, hinge_g_loss, patch_weights
from rt_portrait.training.losses import PIXEL_LOSSES, l1_ssim, texture_loss

log = logging.getLogger(__name__)
MODES = ("teacher", "distill", "regress", "adversarial")
SCHEDULES = ("constant", "cosine")
BATCHES = ("cpu", "device")  # where batches are built: per sample on the CPU, or batched on cfg.device


@dataclass
class TrainConfig:
    mode: str = "teacher"
    cache: Path = Path.home() / ".cache" / "rt-portrait" / "gen-cache" / "train-256"
    out: Path = Path.home() / ".cache" / "rt-portrait" / "runs" / "teacher"
    steps: int = 100_000
    max_minutes: float | None = None  # stop (with a checkpoint) after this much wall time in this process
    batch: int = 8
    lr: float = 3e-4
    warmup: int = 100
    schedule: str = "constant"  # after warmup: "constant", or "cosine" down to 0 at ``steps``
    ema: float = 0.995
    seed: int = 0
    device: str = "cpu"
    batches: str = "cpu"  # "cpu" (make_batch, then moved) or "device" (make_batch_device on `device`)
    threads: int = 1
    amp: str = "none"  # "none" or "bf16" (autocast) for the forward/backward
    ckpt_minutes: float = 3.0
    resume: bool = False
    residual_scale: float = 2.0
    channels: int = 24
    p_t1: float = 0.2  # share of each teacher batch at t = 1; 1.0 tunes the one-step output alone
    ssim_weight: float = 0.5  # loss = L1 + ssim_weight * (1 - SSIM), weighted up on the head
    pixel_loss: str = "l1"  # the per-pixel term: "l1", or "mse" (the flow-matching objective; .losses)
    texture_weight: float = 0.0  # + texture_weight * texture_loss (local detail energy, see .losses)
    drop_motion: float = 0.1
    drop_identity: float = 0.1
    drop_history: float = 0.5  # history dropout (in the batch builder)
    face_weight: float = 4.0  # loss weight added on the head
    # teacher with p_t1 = 1: also learn to displace the base (two flow channels, added at zero
    # to a start without them; see generator.diffusion.displacement_field)
    displacement: bool = False
    displacement_gain: float = 1.0  # UNetConfig.flow_gain of the added channels
    # distillation
    teacher: Path | None = None  # teacher weights (.safetensors)
    init: Path | None = None  # teacher/regress: start from these weights (fresh optimiser and step 0)
    student_steps: int = 1
    teacher_steps: int = 8
    gt_weight: float = 0.5
    # adversarial fine-tuning
    adv_weight: float = 0.05
    disc_lr: float = 2e-4
    disc_channels: int = 32
    aug: AugmentConfig = field(default_factory=AugmentConfig)
    log_every: int = 20

    def to_json(self) -> str:
        d = asdict(self)
        return json.dumps({k: (str(v) if isinstance(v, Path) else v) for k, v in d.items()}, indent=1)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """The learning rate at ``step``: linear warmup, then constant or a cosine to 0 at ``cfg.steps``
    (a tuning run that ends on a decayed rate does not need its checkpoints averaged)."""
    warm = min(1.0, (step + 1) / max(cfg.warmup, 1))
    if cfg.schedule == "constant":
        return cfg.lr * warm
    t = min(1.0, max(0, step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1))
    return cfg.lr * warm * 0.5 * (1 + math.cos(math.pi * t))


def _load_start(path: Path, cfg: TrainConfig, device: torch.device) -> ConditionalUNet:
    """The weights a run starts from (a teacher, or ``--init``), checked against the run's
    residual scale."""
    model, meta = load_weights(path, device)
    if float(meta["residual_scale"]) != cfg.residual_scale:
        raise ValueError(f"{path}: residual_scale {meta['residual_scale']} != {cfg.residual_scale}")
    return model


class _Run:
    """Model, EMA, optimiser and generators of one run (everything a checkpoint holds)."""

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.device = torch.device(cfg.device)
        if cfg.mode in ("distill", "adversarial"):
            if cfg.teacher is None:
                raise ValueError(f"{cfg.mode} needs --teacher (the teacher's .safetensors)")
            teacher = _load_start(cfg.teacher, cfg, self.device)
            # distillation samples the teacher every step; adversarial tuning only starts from it
            self.teacher: ConditionalUNet | None = (
                teacher.requires_grad_(False) if cfg.mode == "distill" else None
            )
            self.model = ConditionalUNet(teacher.config).to(self.device)
            self.model.load_state_dict(teacher.state_dict())
        elif cfg.init is not None:
            self.teacher = None
            start = _load_start(cfg.init, cfg, self.device)
            self.model = ConditionalUNet(start.config).to(self.device)
            self.model.load_state_dict(start.state_dict())
        else:
            self.teacher = None
            with torch.random.fork_rng(devices=[]):  # the initial weights depend on the seed only
                torch.manual_seed(cfg.seed)
                self.model = ConditionalUNet(UNetConfig(channels=cfg.channels)).to(self.device)
        if cfg.displacement and not self.model.config.flow_channels:
            self.model = add_flow_channels(self.model, gain=cfg.displacement_gain)
        # checked on the model, so a displacing --init or --teacher file is caught as well
        if self.model.config.flow_channels and (cfg.mode != "teacher" or cfg.p_t1 != 1.0):
            raise ValueError(
                "a displacing model (--displacement) tunes the one-step output only: it needs "
                f"--mode teacher --p-t1 1 (got --mode {cfg.mode} --p-t1 {cfg.p_t1})"
            )
        self.disc: PatchDiscriminator | None = None
        self.disc_opt: torch.optim.Optimizer | None = None
        if cfg.mode == "adversarial":
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(cfg.seed + 1)
                self.disc = PatchDiscriminator(cfg.disc_channels).to(self.device)
            self.disc_opt = torch.optim.Adam(self.disc.parameters(), lr=cfg.disc_lr, betas=(0.0, 0.99))
        self.ema = ConditionalUNet(self.model.config).to(self.device).requires_grad_(False)
        self.ema.load_state_dict(self.model.state_dict())
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=0.0)
        self.rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)
        # draws the parameters of device-built batches (on the CPU: a few hundred numbers a
        # batch); seeded apart from ``gen`` so batches and noise are not the same stream
        self.batch_gen = torch.Generator().manual_seed(
            int(np.random.SeedSequence((cfg.seed, 1)).generate_state(1)[0])
        )
        self.step = 0
        self.elapsed = 0.0  # training wall time over all resumes
        self.history: list[dict[str, float]] = []

    def state(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "opt": self.opt.state_dict(),
            "rng": self.rng.bit_generator.state,
            "gen": self.gen.get_state(),
            "batch_gen": self.batch_gen.get_state(),
            "step": self.step,
            "elapsed": self.elapsed,
            "history": self.history,
            "config": self.cfg.to_json(),
            **(
                {"disc": self.disc.state_dict(), "disc_opt": self.disc_opt.state_dict()}
                if self.disc is not None and self.disc_opt is not None
                else {}
            ),
        }

    def load(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        self.opt.load_state_dict(state["opt"])
        self.rng.bit_generator.state = state["rng"]
        # .cpu(): torch.load's map_location moves the generators' byte states to cfg.device
        self.gen.set_state(state["gen"].cpu())
        if "batch_gen" in state:  # absent from checkpoints written before device batches
            self.batch_gen.set_state(state["batch_gen"].cpu())
        self.step = int(state["step"])
        self.elapsed = float(state["elapsed"])
        self.history = list(state["history"])
        if self.disc is not None and self.disc_opt is not None:
            self.disc.load_state_dict(state["disc"])
            self.disc_opt.load_state_dict(state["disc_opt"])


def _randn(shape: tuple[int, ...], gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.randn(shape, generator=gen).to(device)


def _rand(n: int, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=gen).to(device)


def _dropout(cond: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    b = cond.shape[0]
    return drop_groups(
        cond,
        {
            "motion": torch.rand(b, generator=gen) < cfg.drop_motion,
            "identity": torch.rand(b, generator=gen) < cfg.drop_identity,
        },
    )


def _weight(batch: Batch, cfg: TrainConfig) -> torch.Tensor:
    return 1 + cfg.face_weight * batch.face


def image_loss(
    pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, cfg: TrainConfig
) -> torch.Tensor:
    """The loss of every mode against a real (or teacher) image: L1 + SSIM (+ texture)."""
    loss = l1_ssim(pred, target, weight, cfg.ssim_weight, cfg.pixel_loss)
    if cfg.texture_weight:
        loss = loss + cfg.texture_weight * texture_loss(pred, target, weight)
    return loss


def loss_teacher(run: _Run, batch: Batch) -> torch.Tensor:
    cfg, dev = run.cfg, run.device
    b = batch.warped.shape[0]
    x0 = cfg.residual_scale * 2 * (batch.target - batch.warped)
    eps = _randn(tuple(x0.shape), run.gen, dev)
    t = _rand(b, run.gen, dev)
    t = torch.where(_rand(b, run.gen, dev) < cfg.p_t1, torch.ones_like(t), t)
    cond = _dropout(batch.cond, cfg, run.gen)
    with _autocast(cfg):
        out = run.model(interpolate(x0, eps, t), t, cond).float()
    # (a displacing model is one-step tuned only, p_t1 = 1: its x0 target above, the residual
    # over the undisplaced base, then never enters the loss)
    disp = displacement_field(out[:, 3:]) if run.model.config.flow_channels else None
    face = displaced_face(batch.warped, out[:, :3], disp, cfg.residual_scale)
    return image_loss(face, batch.target, _weight(batch, cfg), cfg)


def loss_regress(run: _Run, batch: Batch) -> torch.Tensor:
    cfg, dev = run.cfg, run.device
    b = batch.warped.shape[0]
    cond = _dropout(batch.cond, cfg, run.gen)
    with _autocast(cfg):
        res = run.model(torch.zeros_like(batch.warped), torch.ones(b, device=dev), cond).float()
    face = batch.warped + res / (2 * cfg.residual_scale)
    return image_loss(face, batch.target, _weight(batch, cfg), cfg)


def loss_distill(run: _Run, batch: Batch) -> torch.Tensor:
    cfg, dev = run.cfg, run.device
    assert run.teacher is not None
    teacher = run.teacher
    eps = _randn(tuple(batch.warped.shape), run.gen, dev)
    cond = _dropout(batch.cond, cfg, run.gen)

    def teacher_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with _autocast(cfg):
            return x0_to_velocity(x, t, teacher(x, t, c).float())

    def student_fn(x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        with _autocast(cfg):
            return x0_to_velocity(x, t, run.model(x, t, c).float())

    with torch.no_grad():
        x0_t = sample_euler(teacher_fn, eps, schedule(cfg.teacher_steps, device=dev), cond)
    x0_s = sample_euler(student_fn, eps, schedule(cfg.student_steps, device=dev), cond)
    k = 1 / (2 * cfg.residual_scale)
    face_s = batch.warped + x0_s * k
    face_t = (batch.warped + x0_t * k).clamp(0, 1)
    w = _weight(batch, cfg)
    return image_loss(face_s, face_t, w, cfg) + cfg.gt_weight * image_loss(face_s, batch.target, w, cfg)


def loss_adversarial(run: _Run, batch: Batch) -> torch.Tensor:
    """The generator's loss; the discriminator takes its own step here first, on the same
    one-step images (detached), so one call is one step of both."""
    cfg, dev = run.cfg, run.device
    assert run.disc is not None and run.disc_opt is not None
    b = batch.warped.shape[0]
    eps = _randn(tuple(batch.warped.shape), run.gen, dev)
    cond = _dropout(batch.cond, cfg, run.gen)
    with _autocast(cfg):
        x0_hat = run.model(eps, torch.ones(b, device=dev), cond).float()
    face = batch.warped + x0_hat / (2 * cfg.residual_scale)

    real_logits = run.disc(batch.target, batch.warped)
    weight = patch_weights(batch.face, real_logits)
    d_loss = hinge_d_loss(real_logits, run.disc(face.detach().clamp(0, 1), batch.warped), weight)
    run.disc_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    run.disc_opt.step()

    run.disc.requires_grad_(False)
    g_adv = hinge_g_loss(run.disc(face.clamp(0, 1), batch.warped), weight)
    run.disc.requires_grad_(True)
    return image_loss(face, batch.target, _weight(batch, cfg), cfg) + cfg.adv_weight * g_adv


LOSSES = {
    "teacher": loss_teacher,
    "distill": loss_distill,
    "regress": loss_regress,
    "adversarial": loss_adversarial,
}


def _autocast(cfg: TrainConfig):
    if cfg.amp == "bf16":
        return torch.autocast(torch.device(cfg.device).type, dtype=torch.bfloat16)
    from contextlib import nullcontext

    return nullcontext()


def _export(run: _Run) -> Path:
    cfg = run.cfg
    path = cfg.out / "weights.safetensors"
    extra = {
        "mode": cfg.mode,
        "train_steps": str(run.step),
        "train_minutes": f"{run.elapsed / 60:.1f}",
        "p_t1": str(cfg.p_t1) if cfg.mode == "teacher" else "",
        "ssim_weight": str(cfg.ssim_weight),
        "pixel_loss": cfg.pixel_loss,
        "texture_weight": str(cfg.texture_weight),
        "init": cfg.init.name if cfg.init is not None else "",
        "batch": str(cfg.batch),
        "device": str(cfg.device),
        "base": cache_base(cfg.cache),
        "skin_follow": str(cache_skin_follow(cfg.cache)),
        "mouth": cache_mouth(cfg.cache),
        "shell": cache_shell(cfg.cache),
        "fringe": str(int(cache_fringe(cfg.cache))),
        "background_seen": str(int(cache_background_seen(cfg.cache))),
        "student_steps": str(cfg.student_steps)
        if cfg.mode == "distill"
        else "1"
        if cfg.mode == "adversarial"
        else "",
    }
    level = cache_source_detail(cfg.cache)
    if level is not None:  # else the runtime's default: the level of the train split's clips
        extra["source_detail"] = f"{level:.5f}"
    save_weights(
        run.ema, path, cfg.residual_scale, "regression" if cfg.mode == "regress" else "sample", extra
    )
    return path


# What every averaged file must share: the same network, predicting the same thing over the
# same base and head geometry.
AVERAGE_MUST_MATCH = (
    "unet_config",
    "residual_scale",
    "prediction",
    "base",
    "skin_follow",
    "mouth",
    "shell",
    "fringe",
    "background_seen",
)


def average_weights(paths: list[Path], out: Path) -> Path:
    """The tensor-by-tensor mean of several exports of one run (e.g. its EMA weights at a few
    checkpoints), written to ``out`` with the last file's metadata plus ``averaged``."""
    if len(paths) < 2:
        raise ValueError(f"averaging needs at least two weights files, got {len(paths)}")
    loaded = [load_weights(p) for p in paths]
    metas = [meta for _, meta in loaded]
    for key in AVERAGE_MUST_MATCH:
        values = {m.get(key, "") for m in metas}
        if len(values) > 1:
            raise ValueError(f"cannot average weights that differ in {key}: {sorted(values)}")
    model = loaded[-1][0]
    states = [m.state_dict() for m, _ in loaded]
    model.load_state_dict({k: torch.stack([s[k].float() for s in states]).mean(0) for k in states[-1]})
    meta = metas[-1]
    extra = {
        k: v for k, v in meta.items() if k not in ("format", "unet_config", "residual_scale", "prediction")
    }
    steps = ", ".join(m.get("train_steps", "?") for m in metas)
    extra["averaged"] = f"mean of {len(paths)} weights files at train steps {steps}"
    save_weights(model, out, float(meta["residual_scale"]), meta["prediction"], extra)
    return out


def save_checkpoint(run: _Run) -> Path:
    path = run.cfg.out / "ckpt.pt"
    tmp = path.with_suffix(".tmp")
    torch.save(run.state(), tmp)
    tmp.replace(path)
    _export(run)
    return path


def run(cfg: TrainConfig, cache: PairCache | None = None) -> _Run:
    """Train until ``cfg.steps`` (or ``max_minutes``); returns the run (model, EMA, history)."""
    from tqdm import tqdm

    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; choose from {MODES}")
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}; choose from {SCHEDULES}")
    if cfg.pixel_loss not in PIXEL_LOSSES:
        raise ValueError(f"unknown pixel loss {cfg.pixel_loss!r}; choose from {PIXEL_LOSSES}")
    if cfg.batches not in BATCHES:
        raise ValueError(f"unknown batches {cfg.batches!r}; choose from {BATCHES}")
    torch.set_num_threads(cfg.threads)
    cfg.aug.history_dropout = cfg.drop_history
    cfg.out.mkdir(parents=True, exist_ok=True)
    cache = cache or PairCache(cfg.cache)
    r = _Run(cfg)
    ckpt = cfg.out / "ckpt.pt"
    if cfg.resume and ckpt.is_file():
        r.load(torch.load(ckpt, map_location=r.device, weights_only=False))
        log.info("resumed %s at step %d", ckpt, r.step)
    elif not cfg.resume and ckpt.is_file():
        raise FileExistsError(f"{ckpt} exists: pass --resume to continue it, or choose another --out")
    (cfg.out / "config.json").write_text(cfg.to_json())
    dc = DeviceCache(cache, r.device) if cfg.batches == "device" else None
    loss_fn = LOSSES[cfg.mode]
    start = began = time.time()
    last_ckpt = start
    bar = tqdm(total=cfg.steps, initial=r.step, desc=cfg.mode, unit="step", mininterval=5)
    running = 0.0
    r.model.train()
    while r.step < cfg.steps:
        if dc is not None:
            batch = make_batch_device(dc, cfg.batch, cfg.aug, r.batch_gen)
        else:
            batch = make_batch(cache, cfg.batch, cfg.aug, r.rng).to(r.device)
        lr = learning_rate(cfg, r.step)
        for group in r.opt.param_groups:
            group["lr"] = lr
        loss = loss_fn(r, batch)
        r.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(r.model.parameters(), 1.0)
        r.opt.step()
        with torch.no_grad():
            decay = min(cfg.ema, (1 + r.step) / (10 + r.step))
            for pe, pm in zip(r.ema.parameters(), r.model.parameters(), strict=True):
                pe.lerp_(pm, 1 - decay)
        r.step += 1
        running += loss.item()
        bar.update(1)
        if r.step % cfg.log_every == 0:
            now = time.time()
            r.history.append(
                {"step": r.step, "loss": running / cfg.log_every, "minutes": (r.elapsed + now - start) / 60}
            )
            bar.set_postfix(loss=f"{running / cfg.log_every:.4f}")
            log.info("step %d loss %.5f", r.step, running / cfg.log_every)
            running = 0.0
        now = time.time()
        out_of_time = cfg.max_minutes is not None and now - began > cfg.max_minutes * 60
        if now - last_ckpt > cfg.ckpt_minutes * 60 or r.step >= cfg.steps or out_of_time:
            r.elapsed += now - start
            start = last_ckpt = now
            save_checkpoint(r)
            if out_of_time:
                log.info("max_minutes reached at step %d", r.step)
                break
    bar.close()
    return r
