"""Parametric head model: template, pose fitting, head shell, retargeting and edits."""

from .edits import RANGES as EDIT_RANGES
from .edits import apply_edits, validate_edits
from .fit import fit_head, fit_similarity, head_euler, invert_pose
from .retarget import Retargeter, median_reference
from .rotation import euler_from_rotation, rotation_from_euler, slerp_to_identity
from .shell import HeadShell, background_anchors, build_shell, shell_geometry
from .smoothing import HeadStateSmoother
from .template import Template, load_template
from .types import REFERENCES, Edits, HeadState, Pose, RetargetConfig, Strengths

__all__ = [
    "EDIT_RANGES",
    "REFERENCES",
    "Edits",
    "HeadShell",
    "HeadState",
    "HeadStateSmoother",
    "Pose",
    "RetargetConfig",
    "Retargeter",
    "Strengths",
    "Template",
    "apply_edits",
    "background_anchors",
    "build_shell",
    "euler_from_rotation",
    "fit_head",
    "fit_similarity",
    "head_euler",
    "invert_pose",
    "load_template",
    "median_reference",
    "rotation_from_euler",
    "shell_geometry",
    "slerp_to_identity",
    "validate_edits",
]
