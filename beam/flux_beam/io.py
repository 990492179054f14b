"""Reading embeddings into blocks: Parquet, JSON lines and .npy, from any path Beam's filesystems read.

* **Parquet** (``*.parquet``): an id column (strings or numbers) and a vector column (a list or
  fixed-size list of floats), optionally a restricts column (a map of namespace to a list of
  tokens, a struct of such lists, or the JSON text of an object) and a crowding tag column.
* **JSON lines** (``*.jsonl``, ``*.ndjson``): one ``{"id": ..., "vector": [...]}`` per line,
  with optional ``"restricts"`` and ``"crowding_tag"``, as ``flux build`` reads them.
* **.npy**: one float matrix; item ids are the row numbers, as ``flux build`` gives them.

A glob (``gs://bucket/embeddings/*.parquet``) reads every matching file; Parquet row groups and
JSON lines files are split across workers, and a .npy file is read in row ranges.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from flux_beam.items import Block, attributes_of, checked_vectors
from flux_core.errors import InvalidArgument
from flux_core.storage.attributes import ItemAttributes
from flux_core.storage.sharded import key_text

FORMATS = ("parquet", "jsonl", "npy")
_SUFFIXES = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".npy": "npy"}
#: Items per block unless told otherwise.
BLOCK_ROWS = 8192


def detect_format(pattern: str) -> str:
    """The format a path or glob names by its suffix."""
    lowered = pattern.lower()
    for suffix, name in _SUFFIXES.items():
        if lowered.endswith(suffix):
            return name
    raise InvalidArgument(
        f"{pattern}: cannot tell the format from the name; name it (parquet, jsonl or npy) "
        "or use a .parquet, .jsonl or .npy suffix"
    )


@dataclass(frozen=True)
class Columns:
    """Where the items' fields are: column names in Parquet, keys in JSON lines."""

    id: str = "id"
    vector: str = "vector"
    #: None: "restricts" when the input has it. Named explicitly, the input must have it.
    restricts: str | None = None
    #: None: "crowding_tag" when the input has it. Named explicitly, the input must have it.
    crowding: str | None = None
    #: The shard key column, when items are sharded by it rather than by id.
    key: str | None = None


class ReadEmbeddings(beam.PTransform):
    """Read embeddings (and ids, attributes, shard keys) from files into a PCollection of ``Block``.

    ``pattern`` is a path or glob that Beam's filesystems read (local, ``gs://``, ``s3://``, ...);
    ``format`` is ``parquet``, ``jsonl`` or ``npy`` (default: from the suffix).
    """

    def __init__(
        self,
        pattern: str,
        *,
        format: str | None = None,
        columns: Columns = Columns(),
        block_rows: int = BLOCK_ROWS,
    ) -> None:
        super().__init__()
        self.pattern = pattern
        self.format = format or detect_format(pattern)
        if self.format not in FORMATS:
            raise InvalidArgument(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.format == "npy" and columns.key is not None:
            raise InvalidArgument("a .npy file holds no columns to shard by; shard by id (the row number)")
        if block_rows < 1:
            raise InvalidArgument(f"block_rows must be at least 1, got {block_rows}")
        self.columns = columns
        self.block_rows = block_rows

    def expand(self, pbegin: Any) -> Any:
        if self.format == "parquet":
            from apache_beam.io.parquetio import ReadFromParquetBatched

            wanted = _parquet_columns(self.pattern, self.columns)
            return (
                pbegin
                | "Read Parquet" >> ReadFromParquetBatched(self.pattern, columns=wanted)
                | "Parquet to blocks" >> beam.FlatMap(_table_blocks, wanted, self.columns, self.block_rows)
            )
        if self.format == "jsonl":
            from apache_beam.io.textio import ReadFromTextWithFilename

            return (
                pbegin
                | "Read JSON lines" >> ReadFromTextWithFilename(self.pattern)
                | "Parse lines" >> beam.FlatMap(_parse_line, self.columns)
                | "Batch" >> beam.BatchElements(min_batch_size=self.block_rows, max_batch_size=self.block_rows)
                | "Lines to blocks" >> beam.Map(_rows_block)
            )
        return (
            pbegin
            | "Name the file" >> beam.Create([self.pattern])
            | "Row ranges" >> beam.FlatMap(_npy_ranges, self.block_rows)
            | "Spread ranges" >> beam.Reshuffle()
            | "Read rows" >> beam.Map(_npy_block)
        )


# -- Parquet --------------------------------------------------------------------------------


def _parquet_columns(pattern: str, columns: Columns) -> list[str]:
    """The columns to read, checked against the first file's schema (read at pipeline construction)."""
    import pyarrow.parquet as pq

    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
        raise InvalidArgument(f"{pattern}: no file matches")
    first = sorted(m.path for m in matched)[0]
    with FileSystems.open(first, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        names = set(pq.read_schema(fh).names)
    wanted = [columns.id, columns.vector]
    for name, default in ((columns.restricts, "restricts"), (columns.crowding, "crowding_tag")):
        if name is None:
            if default in names:
                wanted.append(default)
        else:
            wanted.append(name)
    if columns.key is not None:
        wanted.append(columns.key)
    missing = [name for name in dict.fromkeys(wanted) if name not in names]
    if missing:
        raise InvalidArgument(f"{first}: has no column {', '.join(map(repr, missing))} (it has {sorted(names)})")
    return list(dict.fromkeys(wanted))


def _table_blocks(table: Any, wanted: Sequence[str], columns: Columns, block_rows: int) -> Iterator[Block]:
    """A Parquet row group's items, ``block_rows`` at a time."""
    for start in range(0, table.num_rows, block_rows):
        yield _table_block(table.slice(start, block_rows), wanted, columns)


def _table_block(table: Any, wanted: Sequence[str], columns: Columns) -> Block:
    import pyarrow as pa

    where = f"Parquet column {columns.vector!r}"
    vector = table.column(columns.vector).combine_chunks()
    if vector.null_count:
        raise InvalidArgument(f"{where}: holds nulls; every item needs a vector")
    kind = vector.type
    if pa.types.is_fixed_size_list(kind):
        dimension = kind.list_size
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        lengths = np.diff(np.asarray(vector.offsets))
        if len(lengths) and (lengths != lengths[0]).any():
            raise InvalidArgument(f"{where}: vectors have different lengths ({lengths.min()} to {lengths.max()})")
        dimension = int(lengths[0]) if len(lengths) else 0
    else:
        raise InvalidArgument(f"{where}: is {kind}, expected a list of floats")
    flat = vector.flatten().to_numpy(zero_copy_only=False)
    vectors = checked_vectors(flat.reshape(table.num_rows, dimension), where)
    ids = table.column(columns.id).to_pylist()
    if any(i is None for i in ids):
        raise InvalidArgument(f"Parquet column {columns.id!r}: holds nulls; every item needs an id")
    restricts = _optional(table, columns.restricts, "restricts", wanted)
    crowding = _optional(table, columns.crowding, "crowding_tag", wanted)
    attributes = None
    if restricts is not None or crowding is not None:
        attributes = [
            attributes_of(
                None if restricts is None else restricts[row],
                None if crowding is None else crowding[row],
                f"item {ids[row]!r}",
            )
            for row in range(table.num_rows)
        ]
    keys = None
    if columns.key is not None:
        values = table.column(columns.key).to_pylist()
        if any(v is None for v in values):
            raise InvalidArgument(f"Parquet column {columns.key!r}: holds nulls; every item needs a shard key")
        keys = [key_text(v) for v in values]
    return Block([str(i) for i in ids], vectors, attributes, keys)


def _optional(table: Any, named: str | None, default: str, wanted: Sequence[str]) -> list[Any] | None:
    name = named or default
    return table.column(name).to_pylist() if name in wanted else None


# -- JSON lines -----------------------------------------------------------------------------


def _parse_line(named_line: tuple[str, str], columns: Columns) -> Iterator[dict[str, Any]]:
    filename, line = named_line
    if not line.strip():
        return
    try:
        record = json.loads(line)
        item_id = str(record[columns.id])
        vector = record[columns.vector]
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument(
            f'{filename}: expected a line like {{"{columns.id}": ..., "{columns.vector}": [...]}}: {exc!r}'
        ) from None
    restricts_key, crowding_key = columns.restricts or "restricts", columns.crowding or "crowding_tag"
    item: dict[str, Any] = {"id": item_id, "vector": vector}
    if restricts_key in record or crowding_key in record:
        item["attributes"] = attributes_of(
            record.get(restricts_key), record.get(crowding_key), f"{filename}: item {item_id!r}"
        )
    if columns.key is not None:
        if record.get(columns.key) is None:
            raise InvalidArgument(f"{filename}: item {item_id!r} has no shard key {columns.key!r}")
        item["key"] = key_text(record[columns.key])
    yield item


def _rows_block(rows: Sequence[dict[str, Any]]) -> Block:
    try:
        matrix = np.array([row["vector"] for row in rows], dtype=np.float32)
    except ValueError as exc:
        raise InvalidArgument(f"JSON lines: vectors have different lengths or are not numbers: {exc}") from None
    with_attributes = any("attributes" in row for row in rows)
    with_keys = any("key" in row for row in rows)
    return Block(
        ids=[row["id"] for row in rows],
        vectors=checked_vectors(matrix.reshape(len(rows), -1), "JSON lines"),
        attributes=[row.get("attributes") or ItemAttributes() for row in rows] if with_attributes else None,
        keys=[row["key"] for row in rows] if with_keys else None,
    )


# -- .npy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _NpyRange:
    path: str
    offset: int  # where row 0 starts in the file
    dtype: str
    dimension: int
    start: int
    stop: int


def _npy_ranges(pattern: str, block_rows: int) -> Iterator[_NpyRange]:
    """The row ranges of the one .npy file ``pattern`` names, read from its header."""
    matched = FileSystems.match([pattern])[0].metadata_list
    if len(matched) != 1:
        raise InvalidArgument(
            f"{pattern}: matches {len(matched)} files; a .npy input is one file (its row numbers are the ids)"
        )
    path = matched[0].path
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        try:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran_order, dtype = read_header(fh)
        except ValueError as exc:
            raise InvalidArgument(f"{path}: not a .npy file: {exc}") from None
        offset = fh.tell()
    if len(shape) != 2 or fortran_order or not np.issubdtype(dtype, np.number) or dtype.hasobject:
        raise InvalidArgument(f"{path}: expected a 2-D numeric array in row-major order, got {dtype} {shape}")
    rows, dimension = shape
    for start in range(0, rows, block_rows):
        yield _NpyRange(path, offset, dtype.str, dimension, start, min(start + block_rows, rows))


def _npy_block(part: _NpyRange) -> Block:
    dtype = np.dtype(part.dtype)
    width = dtype.itemsize * part.dimension
    with FileSystems.open(part.path, compression_type=CompressionTypes.UNCOMPRESSED) as fh:
        fh.seek(part.offset + part.start * width)
        data = fh.read((part.stop - part.start) * width)
    if len(data) != (part.stop - part.start) * width:
        raise InvalidArgument(f"{part.path}: ends before row {part.stop} (truncated?)")
    matrix = np.frombuffer(data, dtype).reshape(part.stop - part.start, part.dimension)
    ids = [str(row) for row in range(part.start, part.stop)]
    return Block(ids, checked_vectors(matrix, f"{part.path} rows {part.start}..{part.stop}"))
