"""Self-reenactment evaluation: metrics, baselines and the ``rt-portrait eval`` harness."""

from rt_portrait.eval.baselines import METHOD_NAMES, Flow3D, Method, make_method, static, warp2d
from rt_portrait.eval.harness import ClipResult, EvalConfig, EvalReport, VideoReadError, evaluate

__all__ = [
    "METHOD_NAMES",
    "ClipResult",
    "EvalConfig",
    "EvalReport",
    "Flow3D",
    "Method",
    "VideoReadError",
    "evaluate",
    "make_method",
    "static",
    "warp2d",
]
