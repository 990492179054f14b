"""GetItems: the request from ids, the answer to numpy (the stored vectors of the ids found)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from flux_api.v1 import vector_service_pb2
from flux_client._errors import invalid

_F32 = np.dtype("<f4")


class Items(NamedTuple):
    """The ids the index holds, in request order, and their stored vectors, one row each (len(ids) x dimension).

    An id the index does not hold is left out of both; compare ``ids`` with the ids asked for.
    """

    ids: list[str]
    vectors: npt.NDArray[np.float32]


def items_request(index: str, ids: Sequence[str], version: int = 0) -> vector_service_pb2.GetItemsRequest:
    if isinstance(ids, str | bytes):
        raise invalid("ids must be a list of ids, not one string", "ids")
    listed = list(ids)
    for row, item in enumerate(listed):
        if not isinstance(item, str):
            raise invalid(f"ids[{row}] must be a string, got {type(item).__name__}", f"ids[{row}]", "INVALID_ID")
    if isinstance(version, bool) or not isinstance(version, int | np.integer) or version < 0:
        raise invalid(f"version must be a non-negative integer, got {version!r}", "version")
    return vector_service_pb2.GetItemsRequest(index=index, ids=listed, version=int(version))


def items(response: vector_service_pb2.GetItemsResponse) -> Items:
    found = [item for item in response.items if item.found]
    if not found:
        return Items([], np.empty((0, 0), _F32))
    dimension = found[0].vector.dimension
    data = b"".join(item.vector.data for item in found)
    return Items([item.id for item in found], np.frombuffer(data, dtype=_F32).reshape(len(found), dimension))
