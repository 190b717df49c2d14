"""3D flow stage: head scene point clouds -> per-pixel flow, visibility, depth, normal, labels
and the K-candidate flow encoding (Triton kernels in ``rt_portrait.kernels`` + torch twins).

The scene builder (head state -> point cloud) is ``rt_portrait.flow.scene``; the elastic
background around the head is ``rt_portrait.flow.elastic``.
"""

from rt_portrait.core.types import NUM_REGIONS, Region

from .dispatch import (
    FlowBackendError,
    compute_flow,
    resolve_backend,
    source_background_visibility,
    source_visibility,
    splat_params,
    validate_cloud,
)
from .types import FlowConfig, FlowFields, PointCloud, Window

__all__ = [
    "NUM_REGIONS",
    "FlowBackendError",
    "FlowConfig",
    "FlowFields",
    "PointCloud",
    "Region",
    "Window",
    "compute_flow",
    "resolve_backend",
    "source_background_visibility",
    "source_visibility",
    "splat_params",
    "validate_cloud",
]
