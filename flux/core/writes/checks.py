"""The checks a write passes before it is logged, against the version that answers: errors name the field at fault.

Only a write that passes them reaches the log, so every record the log holds can be applied.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from flux.core.serving.index import ServedIndex
from flux_core.backend import Matrix
from flux_core.errors import InvalidArgument, Reason, shown
from flux_core.storage import artifact
from flux_core.storage.attributes import ItemAttributes
from flux_core.vectors import check_vectors


def check_upsert(
    index: ServedIndex,
    ids: Sequence[str],
    vectors: Matrix,
    attributes: Sequence[ItemAttributes] | None,
    field: str,
) -> None:
    """An upsert's ids, vectors and attributes; ``field`` prefixes the field names in errors."""
    check_ids(ids, f"{field}ids", index.limits.max_batch)
    index.check_ids(ids, f"{field}ids")  # only here: a delete must reach ids stored under a higher limit
    index.check_dimension(vectors.shape[1], f"{field}vectors")
    check_vectors(vectors, f"{field}vectors")
    if len(vectors) != len(ids):
        raise InvalidArgument(
            f"{field}vectors holds {len(vectors)} vectors for {len(ids)} ids; send one vector per id",
            field=f"{field}vectors",
        )
    if attributes is not None and len(attributes) != len(ids):
        raise InvalidArgument(
            f"{field}attributes holds {len(attributes)} entries for {len(ids)} ids; send none or one per id",
            field=f"{field}attributes",
        )


def immutable_message(index: str, backend: str) -> str:
    return (
        f"index {index!r} uses the {backend} backend, which is immutable: build a new version with "
        "`flux build` and publish it to the index's source instead of writing to it"
    )


def check_ids(ids: Sequence[str], field: str, limit: int) -> None:
    """At least one id and at most ``limit``, none empty, none given twice."""
    if not ids:
        raise InvalidArgument(f"{field} is empty; send at least one id", field=field)
    if len(ids) > limit:
        raise InvalidArgument(
            f"{field} holds {len(ids)} ids; the limit is {limit} per call (limits.max_batch), split the batch",
            field=field,
            reason=Reason.BATCH_TOO_LARGE,
        )
    seen: dict[str, int] = {}
    for row, item in enumerate(ids):
        if not item:
            raise InvalidArgument(f"{field}[{row}] is empty; ids are non-empty strings", field=f"{field}[{row}]")
        first = seen.setdefault(item, row)
        if first != row:
            raise InvalidArgument(
                f"{field}[{row}] {shown(item)} repeats {field}[{first}]; give each id once per request",
                field=f"{field}[{row}]",
                reason=Reason.DUPLICATE_ID,
            )


def writable_source_problem(index: str, source: Path) -> str:
    """Why ``source`` cannot hold a writable index's versions ("" when it can): it is a bare artifact."""
    if (source / artifact.MANIFEST).is_file():
        return (
            f"index {index!r} takes writes, so its path must be a directory of numbered versions "
            f"(e.g. {source}/1/), not an artifact; move the artifact into {source}/1/"
        )
    return ""
