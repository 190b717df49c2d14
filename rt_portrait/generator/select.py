"""Choosing and building the generator from a configuration (one place for every app).

``generator``: ``"diffusion"`` (the distilled UNet of :mod:`.diffusion`), ``"warp"`` (the
learning-free :class:`~rt_portrait.generator.warp_fill.WarpFillGenerator`) or ``"auto"``:
diffusion when its weights are installed *and* their metadata says they passed validation
against the warp (``beats_warp = "true"``, written only when the learned generator beat the
warp-only output on the validation set), the warp otherwise. The weights shipped today do not
carry it: they beat the warp on face PSNR, L1 and SSIM but not on sharpness, landmark error or
identity across people (see the model card), so ``auto`` means the warp until weights that
beat it on all of these are shipped. An explicit ``"diffusion"`` without
weights is an error that names the missing file.

The diffusion module is imported lazily: the warp path never loads safetensors or the UNet.
"""

from __future__ import annotations

import argparse
import copy
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from rt_portrait.generator.colour import CHROMA_CLAMP
from rt_portrait.generator.texture import TEXTURE_GAIN
from rt_portrait.generator.types import Generator
from rt_portrait.generator.warp_fill import WarpFillGenerator
from rt_portrait.head.shell import SHELL_MODES

GENERATORS = ("auto", "diffusion", "warp")
# the default low-pass of the generator's change of the still source (pipeline.AnimatorConfig's
# still_sigma, working pixels): chosen on val between 2 and 4 (4 kept the SSIM), confirmed on
# train clips (README: "A sharper learned face")
STILL_SIGMA = 4.0


@dataclass(frozen=True)
class GeneratorSpec:
    """What :func:`build_generator` builds (the generator part of ``AnimatorConfig``)."""

    generator: str = "auto"  # "auto", "diffusion" or "warp"
    steps: int = 1  # sampling steps of the diffusion generator
    motion_weight: float = 1.0  # fusion weights (1 = as trained; see generator.sampling)
    identity_weight: float = 1.0
    detail: float = 0.0  # keep the warp's detail where visible (DiffusionConfig.detail); 0 = off
    # match the warp's texture energy where the source is visible (DiffusionConfig.texture_gain); 1 = off
    texture_gain: float = TEXTURE_GAIN
    # the source detail the model is shown (DiffusionConfig.source_detail); None: the weights'
    source_detail: float | None = None
    weights: str | Path | None = None  # None: the shipped weights (diffusion.DEFAULT_WEIGHTS)
    mouth: str = "teeth"  # the mouth style every base paints (generator.mouth.MOUTH_STYLES)
    device: str = "cpu"
    # the diffusion network's backend (rt_portrait.engines: auto, eager, compile, onnxruntime,
    # tensorrt), resolved once when the generator is built, for working size ``size``
    backend: str = "auto"
    size: int = 256


def default_weights(steps: int = 1) -> Path:
    """The shipped weights for ``steps`` sampling steps, as :func:`.diffusion.default_weights`
    resolves them: the 1-step student for 1; ``generator_2step`` for 2 when it is installed;
    for more, the teacher, else the 2-step student, else the 1-step one."""
    from rt_portrait.generator import diffusion

    return diffusion.default_weights(steps)


def teacher_weights() -> Path:
    """Where the shipped teacher's weights are (session 26; a checkout may lack them)."""
    from rt_portrait.generator.diffusion import TEACHER_WEIGHTS

    return Path(TEACHER_WEIGHTS)


TEACHER_STEPS = 16  # the teacher's sampling steps when its weights do not say


VALIDATED_KEY = "beats_warp"  # weights metadata: "true" when they beat the warp on validation


def weights_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a weights file, without loading its tensors."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def resolve_generator(name: str, weights: str | Path | None = None, steps: int = 1) -> str:
    """``"diffusion"`` or ``"warp"`` for a requested name (see the module doc)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}")
    if name == "warp":
        return "warp"
    path = Path(weights) if weights is not None else default_weights(steps)
    if path.is_file() and (name == "diffusion" or weights_metadata(path).get(VALIDATED_KEY) == "true"):
        return "diffusion"
    if name == "diffusion":
        raise FileNotFoundError(
            f"generator 'diffusion' needs its weights, and {path} does not exist "
            "(install the package with its weights, pass the weights path, or use --generator warp)"
        )
    return "warp"


def build_generator(spec: GeneratorSpec) -> Generator:
    """The generator ``spec`` asks for (``"auto"`` resolved by :func:`resolve_generator`)."""
    if spec.steps < 1:
        raise ValueError(f"steps must be at least 1, got {spec.steps}")
    if resolve_generator(spec.generator, spec.weights, spec.steps) == "warp":
        return WarpFillGenerator(mouth_style=spec.mouth)
    from rt_portrait.generator.diffusion import DiffusionConfig, DiffusionGenerator

    diffusion = DiffusionGenerator(
        DiffusionConfig(
            weights=spec.weights if spec.weights is not None else default_weights(spec.steps),
            steps=spec.steps,
            motion_weight=spec.motion_weight,
            identity_weight=spec.identity_weight,
            detail=spec.detail,
            texture_gain=spec.texture_gain,
            source_detail=spec.source_detail,
            mouth=spec.mouth,
            device=spec.device,
        )
    )
    from rt_portrait.engines.generator import with_backend
    from rt_portrait.engines.resolver import EngineConfig

    return with_backend(diffusion, spec.size, EngineConfig(backend=spec.backend))


def generator_kind(generator: Any) -> str:
    """``"diffusion"``, ``"warp"`` or the class name of another generator (for stats, logs)."""
    if isinstance(generator, WarpFillGenerator):
        return "warp"
    if any(c.__name__ == "DiffusionGenerator" for c in type(generator).__mro__):  # engines' subclass too
        return "diffusion"
    return type(generator).__name__


def uses_history(generator: Any) -> bool:
    """Whether ``generator`` reads ``GeneratorInput.history`` (so the session should warp its
    previous output forward; the warp fill does not look at it). A generator may say so with a
    ``reads_history`` attribute; the diffusion generator does when ``config.history`` is on."""
    flag = getattr(generator, "reads_history", None)
    if flag is not None:
        return bool(flag)
    cfg = getattr(generator, "config", None)
    return generator_kind(generator) == "diffusion" and bool(getattr(cfg, "history", False))


def generator_steps(generator: Any) -> int | None:
    """The sampling steps of a diffusion generator, None for others."""
    cfg = getattr(generator, "config", None)
    return int(cfg.steps) if generator_kind(generator) == "diffusion" and cfg is not None else None


def with_steps(generator: Any, steps: int) -> Any:
    """A view of a diffusion generator that samples in ``steps`` steps, sharing its model and
    noise (no weights reloaded; the original is left as it is). Others come back unchanged."""
    if generator_kind(generator) != "diffusion" or generator.config.steps == steps:
        return generator
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}")
    view = copy.copy(generator)  # shallow: the UNet and the noise cache are shared
    view.config = replace(generator.config, steps=steps)
    return view


def add_generator_arguments(parser: Any, steps_help: str | None = None) -> None:
    """``--generator``, ``--steps``, ``--motion-weight``, ``--identity-weight`` and
    ``--generator-weights`` on an argparse parser (every command that renders takes them)."""
    g = parser.add_argument_group("generator")
    g.add_argument(
        "--generator",
        choices=GENERATORS,
        default="auto",
        help="auto: the learned diffusion generator when its weights are installed and marked as "
        "beating the warp on validation (the shipped ones are not), else the warp fill; "
        "diffusion; warp (learning-free, fastest)",
    )
    g.add_argument("--steps", type=int, default=1, help=steps_help or "diffusion sampling steps (default 1)")
    g.add_argument(
        "--motion-weight",
        type=float,
        default=1.0,
        help="fusion weight of the motion condition (1 = as trained; >1 follows the driver harder)",
    )
    g.add_argument(
        "--identity-weight",
        type=float,
        default=1.0,
        help="fusion weight of the source (identity) condition (1 = as trained; >1 keeps likeness)",
    )
    g.add_argument(
        "--detail",
        type=float,
        default=0.0,
        metavar="SIGMA",
        help="keep the warp's real detail where the source is visible: the generator's correction "
        "is low-passed there with this Gaussian sigma in working pixels (e.g. 2: sharper, a little "
        "less accurate); 0 = the model's output as trained (default)",
    )
    g.add_argument(
        "--texture-gain",
        type=float,
        default=TEXTURE_GAIN,
        metavar="G",
        help="where the source is visible, amplify the generator's finest detail, by at most G, "
        "until its local energy matches the warp's (the one-step sample is softer than the real "
        f"frame); 1 = the model's output as trained (default: {TEXTURE_GAIN})",
    )
    g.add_argument(
        "--source-detail",
        type=float,
        default=None,
        metavar="LEVEL",
        help="show the learned generator a source at most this detailed (the standard deviation of "
        "its face's finest band on the working grid) and add the rest of its detail back where the "
        "source is visible, so a photo sharper than the training clips keeps its own detail; "
        "0 = off (default: the level of the weights' training clips, 0.011 for the shipped ones)",
    )
    g.add_argument(
        "--still-sigma",
        type=float,
        default=STILL_SIGMA,
        metavar="SIGMA",
        help="take away the generator's own change of the still source (its output for the source's "
        "head state minus the warp, low-passed with this Gaussian sigma in working pixels) from every "
        f"frame; 0 = off (default: {STILL_SIGMA:g})",
    )
    g.add_argument(
        "--chroma-clamp",
        type=float,
        default=CHROMA_CLAMP,
        metavar="K",
        help="keep the portrait's colours: a generated pixel's chroma stays within K standard deviations "
        "of the source head's (or as far out as the visible warp it was given), so a black-and-white "
        f"portrait stays grey; 0 = off (default: {CHROMA_CLAMP:g})",
    )
    g.add_argument(
        "--frame-detail",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="compose the generator's face as a correction of the full-resolution warp where the "
        "source is visible, so detail finer than the working grid survives (default: on; "
        "--no-frame-detail upsamples the working-resolution face as is)",
    )
    g.add_argument(
        "--generator-weights",
        default=None,
        metavar="FILE",
        help="diffusion weights (default: the shipped ones)",
    )
    g.add_argument(
        "--mouth",
        choices=("teeth", "strips"),
        default="teeth",
        help="how a mouth the source keeps shut is painted (the warp fill, and the learned generator's "
        "base): teeth (teeth, cavity and tongue in a smooth outline; default) or strips (the mean mouth "
        "of the train clips, before session 13; what the shipped weights were trained on)",
    )
    g.add_argument(
        "--shell",
        choices=SHELL_MODES,
        default="auto",
        help="the head's skull behind the face: fitted (scaled to the source's person outline, so a "
        "turn carries ears and hair along), generic (the template's), or auto (default: fitted for the "
        "warp fill, for a learned model the skull it was trained on: the shipped one's is generic)",
    )
    g.add_argument(
        "--fringe",
        choices=("auto", "on", "off"),
        default="auto",
        help="attach the person's head beyond the skull (a hat's brim, big hair) so a turn carries it: "
        "on, off (the skull alone, before session 21), or auto (default: on, unless a learned model's "
        "weights record off)",
    )
    g.add_argument(
        "--background-seen",
        choices=("auto", "on", "off"),
        default="auto",
        help="background that samples where the source's head was (beside a head that moved) is filled "
        "from the wall instead of showing the old head: on, off, or auto (default: on, unless a learned "
        "model's weights record off)",
    )
    g.add_argument(
        "--backend",
        choices=("auto", "eager", "compile", "onnxruntime", "tensorrt"),
        default="auto",
        help="the diffusion network's engine, chosen once at start-up: auto (GPU: TensorRT, compile, "
        "ONNX Runtime CUDA, eager, the first that builds and passes parity; CPU: the faster of "
        "ONNX Runtime and eager by a short probe), or one of them (README: Engines)",
    )


ON_OFF: dict[str, bool | None] = {"auto": None, "on": True, "off": False}


def generator_options(args: Any) -> dict[str, Any]:
    """``AnimatorConfig`` keyword arguments from :func:`add_generator_arguments`'s options."""
    if args.steps < 1:
        raise ValueError(f"--steps must be at least 1, got {args.steps}")
    if not args.detail >= 0:
        raise ValueError(f"--detail must be 0 or more, got {args.detail}")
    if not args.still_sigma >= 0:
        raise ValueError(f"--still-sigma must be 0 (off) or more, got {args.still_sigma}")
    if not args.chroma_clamp >= 0:
        raise ValueError(f"--chroma-clamp must be 0 (off) or more, got {args.chroma_clamp}")
    if not args.texture_gain >= 1:
        raise ValueError(f"--texture-gain must be 1 or more (1 = off), got {args.texture_gain}")
    if args.source_detail is not None and not args.source_detail >= 0:
        raise ValueError(f"--source-detail must be 0 (off) or more, got {args.source_detail}")
    return {
        "generator": args.generator,
        "steps": args.steps,
        "motion_weight": args.motion_weight,
        "identity_weight": args.identity_weight,
        "detail": args.detail,
        "texture_gain": args.texture_gain,
        "source_detail": args.source_detail,
        "still_sigma": args.still_sigma or None,
        "chroma_clamp": args.chroma_clamp,
        "frame_detail": args.frame_detail,
        "generator_weights": args.generator_weights,
        "mouth": args.mouth,
        "shell": args.shell,
        "fringe": ON_OFF[args.fringe],
        "background_seen": ON_OFF[args.background_seen],
        "backend": args.backend,
    }
