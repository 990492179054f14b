"""The backend interface's former home, kept so plugins written against Flux 0.1 still import.

The interface lives in the lean ``flux-core`` distribution now; import ``flux_core.backend``.
"""

from flux_core.backend import (
    API_VERSION,
    SUPPORTED_API_VERSIONS,
    Backend,
    Capabilities,
    Labels,
    Matrix,
    Metric,
    Param,
    Progress,
    ReadWriteGate,
    defaults,
    pad_results,
    resolve_params,
)

__all__ = [
    "API_VERSION",
    "SUPPORTED_API_VERSIONS",
    "Backend",
    "Capabilities",
    "Labels",
    "Matrix",
    "Metric",
    "Param",
    "Progress",
    "ReadWriteGate",
    "defaults",
    "pad_results",
    "resolve_params",
]
