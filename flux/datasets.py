"""Vectors in and out of files, and seeded synthetic data for demos, tests and benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from flux_core.backend import Matrix
from flux_core.errors import InvalidArgument
from flux_core.storage.attributes import ItemAttributes


def clustered(n: int, dimension: int, *, clusters: int = 64, spread: float = 0.35, seed: int = 0) -> Matrix:
    """``n`` vectors around ``clusters`` random centres, like real embeddings: dense regions,
    uneven cluster sizes. A larger ``spread`` makes clusters overlap (harder for ANN)."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dimension)).astype(np.float32)
    weights = rng.dirichlet(np.full(clusters, 2.0))
    assignment = rng.choice(clusters, size=n, p=weights)
    noise = rng.standard_normal((n, dimension)).astype(np.float32) * spread
    return np.ascontiguousarray(centres[assignment] + noise, dtype=np.float32)


def load_vectors(path: Path) -> tuple[Matrix, list[str] | None]:
    """Read vectors (and ids, where the format carries them) from .npy, .fvecs or .jsonl.

    A .jsonl file holds one object per line: ``{"id": "...", "vector": [...]}``.
    """
    vectors, ids, _ = load_items(path)
    return vectors, ids


def load_items(path: Path) -> tuple[Matrix, list[str] | None, list[ItemAttributes] | None]:
    """As ``load_vectors``, plus the items' attributes where the format carries them.

    A .jsonl line may add ``"restricts": {"market": ["US", "SE"]}`` and ``"crowding_tag": "artist:1"``;
    a token or tag that is not a string (``false``, ``2024``) is taken as its JSON text. The
    attributes are None when no line has either key (docs/filters.md).
    """
    suffix = path.suffix.lower()
    if suffix == ".npy":
        matrix = np.load(path, allow_pickle=False)
        return _as_matrix(matrix, path), None, None
    if suffix == ".fvecs":
        return _read_fvecs(path), None, None
    if suffix in {".jsonl", ".ndjson"}:
        return _read_jsonl(path)
    raise InvalidArgument(f"{path}: unsupported vector file type {suffix!r}; use .npy, .fvecs or .jsonl")


def load_ids(path: Path) -> list[str]:
    """One id per line, UTF-8; a trailing newline is ignored."""
    return path.read_text(encoding="utf-8").splitlines()


def _as_matrix(matrix: np.ndarray, path: Path) -> Matrix:
    if matrix.ndim != 2 or not np.issubdtype(matrix.dtype, np.number):
        raise InvalidArgument(f"{path}: expected a 2-D numeric array, got {matrix.dtype} with shape {matrix.shape}")
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if not np.isfinite(matrix).all():
        row = int(np.argmin(np.isfinite(matrix).all(axis=1)))
        raise InvalidArgument(f"{path}: row {row} contains NaN or Inf")
    return matrix


def _read_fvecs(path: Path) -> Matrix:
    raw = np.fromfile(path, dtype="<i4")
    if raw.size == 0:
        raise InvalidArgument(f"{path}: empty file")
    dimension = int(raw[0])
    if dimension <= 0 or raw.size % (dimension + 1):
        raise InvalidArgument(f"{path}: not an .fvecs file (each record is a little-endian int32 dimension + floats)")
    records = raw.reshape(-1, dimension + 1)
    if not (records[:, 0] == dimension).all():
        raise InvalidArgument(f"{path}: records have different dimensions; .fvecs needs one dimension throughout")
    return _as_matrix(records[:, 1:].view("<f4"), path)


def _read_jsonl(path: Path) -> tuple[Matrix, list[str], list[ItemAttributes] | None]:
    ids: list[str] = []
    rows: list[list[float]] = []
    attributes: list[ItemAttributes] = []
    any_attributes = False
    with path.open(encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                ids.append(str(record["id"]))
                rows.append(record["vector"])
            except (ValueError, KeyError, TypeError) as exc:
                raise InvalidArgument(f'{path}:{number}: expected {{"id": ..., "vector": [...]}}: {exc}') from None
            any_attributes = any_attributes or "restricts" in record or "crowding_tag" in record
            attributes.append(_attributes(record, f"{path}:{number}"))
    try:
        matrix = np.array(rows, dtype=np.float32)
    except ValueError as exc:
        raise InvalidArgument(f"{path}: vectors have different lengths: {exc}") from None
    return _as_matrix(matrix.reshape(len(rows), -1), path), ids, attributes if any_attributes else None


def _attributes(record: dict[str, object], where: str) -> ItemAttributes:
    """A .jsonl line's ``restricts`` and ``crowding_tag``; errors name the line."""
    restricts = record.get("restricts") or {}
    if not isinstance(restricts, dict) or not all(isinstance(t, list) for t in restricts.values()):
        raise InvalidArgument(f'{where}: "restricts" must be an object of namespace: [tokens, ...]')
    tag = record.get("crowding_tag")
    pairs = [(str(ns), [_token(t, where) for t in tokens]) for ns, tokens in restricts.items()]
    return ItemAttributes.create(pairs, "" if tag is None else _token(tag, where), field=where)


def _token(value: object, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value)
    raise InvalidArgument(f"{where}: a restrict token or crowding tag must be a string, number or boolean")
