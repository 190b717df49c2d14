"""3D flow stage: head scene point clouds -> per-pixel flow, visibility, depth, normal, labels
and the K-candidate flow encoding (Triton kernels in ``rt_portrait.kernels`` + torch twins).

The scene builder lives in ``rt_portrait.flow.scene`` (not imported here: it depends on the
head package, which itself imports ``rt_portrait.flow.types``).
"""
from .dispatch import (FlowBackendError, compute_flow, resolve_backend, source_background_visibility, source_visibility,
                       splat_params, validate_cloud)
from .types import NUM_REGIONS, FlowConfig, FlowFields, PointCloud, Region, Window

__all__ = [
    "FlowBackendError", "compute_flow", "resolve_backend", "source_background_visibility", "source_visibility", "splat_params", "validate_cloud",
    "NUM_REGIONS", "FlowConfig", "FlowFields", "PointCloud", "Region", "Window",
]
