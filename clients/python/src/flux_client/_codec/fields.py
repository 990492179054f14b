"""The fields several messages share: vectors as float32 bytes, k, and what every kind of search may
carry (params, filter, version, routing key), each checked here so that a bad one fails before the call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from flux_api.v1 import types_pb2, vector_service_pb2
from flux_client._errors import invalid
from flux_client._types import Filter

F32 = np.dtype("<f4")
_INTEGERS = (int, np.integer)


def as_matrix(vectors: npt.ArrayLike, field: str) -> npt.NDArray[np.float32]:
    """``vectors`` as a float32 array of one (1-D) or several (2-D) vectors; no copy when already so."""
    try:
        array = np.asarray(vectors, dtype=F32)
    except (TypeError, ValueError) as exc:
        raise invalid(f"{field} must be numbers, one vector or one vector per row ({exc})", field) from None
    if array.ndim not in (1, 2) or array.shape[-1] == 0:
        raise invalid(f"{field} must be one vector (1-D) or a matrix of vectors (2-D), got shape {array.shape}", field)
    return array


def float_vectors(matrix: npt.NDArray[np.float32]) -> types_pb2.FloatVectors:
    return types_pb2.FloatVectors(dimension=matrix.shape[-1], data=matrix.tobytes())


_Request = (
    vector_service_pb2.SearchRequest
    | vector_service_pb2.BatchSearchRequest
    | vector_service_pb2.SearchByIdRequest
    | vector_service_pb2.StreamSearchRequest
)


def set_options(
    request: _Request, params: Mapping[str, float] | None, filter: Filter | None, version: int, routing_key: str
) -> None:
    """Set what every kind of search may carry; unset fields cost nothing on the wire."""
    if params:
        request.params.update(_params(params))
    if filter is not None:
        request.filter.CopyFrom(_filter(filter))
    if version:
        if isinstance(version, bool) or not isinstance(version, _INTEGERS) or version < 0:
            raise invalid(f"version must be a version number, or 0 for the active one; got {version!r}", "version")
        request.version = int(version)
    if routing_key:
        request.routing_key = routing_key


def _filter(spec: Filter) -> types_pb2.Filter:
    def restricts(field: str, namespaces: Mapping[str, Sequence[str]]) -> list[types_pb2.Restrict]:
        out = []
        for namespace, tokens in namespaces.items():
            if isinstance(tokens, str):
                raise invalid(
                    f"filter.{field}[{namespace!r}] must be a list of tokens, e.g. [{tokens!r}]",
                    "filter",
                    "INVALID_FILTER",
                )
            out.append(types_pb2.Restrict(namespace=namespace, tokens=list(tokens)))
        return out

    if isinstance(spec.exclude_ids, str):
        raise invalid("filter.exclude_ids must be a list of ids, not one string", "filter", "INVALID_FILTER")
    return types_pb2.Filter(
        allow=restricts("allow", spec.allow),
        deny=restricts("deny", spec.deny),
        exclude_ids=list(spec.exclude_ids),
        max_per_crowding_tag=_count(spec.max_per_crowding_tag, "filter.max_per_crowding_tag", "INVALID_FILTER"),
        exclude_id_hashes=_hashes(spec.exclude_id_hashes),
    )


def _hashes(hashes: Sequence[int] | npt.NDArray[np.uint64]) -> list[int]:
    """``filter.exclude_id_hashes`` as whole numbers in [0, 2^64), from a sequence or array of them."""
    if isinstance(hashes, np.ndarray) and hashes.dtype.kind == "u" and hashes.ndim == 1:
        return hashes.astype(np.uint64).tolist()  # type: ignore[no-any-return]
    values = None
    if not isinstance(hashes, str | bytes):
        values = hashes.tolist() if isinstance(hashes, np.ndarray) else list(hashes)
    if values is None or not all(
        isinstance(v, _INTEGERS) and not isinstance(v, bool | np.bool_) and 0 <= v < 2**64 for v in values
    ):
        field = "filter.exclude_id_hashes"
        raise invalid(f"{field} must be a list of whole numbers in [0, 2^64), as flux_client.id_hashes gives",
                      field, "INVALID_FILTER")  # fmt: skip
    return [int(v) for v in values]


def _count(value: int, field: str, reason: str = "INVALID_ARGUMENT") -> int:
    if isinstance(value, bool) or not isinstance(value, _INTEGERS) or value < 0:
        raise invalid(f"{field} must be a whole number >= 0, got {value!r}", field, reason)
    return int(value)


def checked_k(k: int, field: str) -> int:
    if isinstance(k, bool) or not isinstance(k, _INTEGERS) or k < 1:
        raise invalid(f"{field} must be a positive integer, got {k!r}", field, "K_OUT_OF_RANGE")
    return int(k)


def _params(params: Mapping[str, float]) -> dict[str, float]:
    try:
        return {str(name): float(value) for name, value in params.items()}
    except (TypeError, ValueError):
        raise invalid(f"params must map names to numbers, e.g. {{'ef': 128}}, got {dict(params)!r}", "params") from None
