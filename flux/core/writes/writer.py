"""Durable writes to one index: upserts and deletes, logged and synced, then applied in log order.

How a write travels (``Writer``):

1. ``submit_upsert`` / ``submit_delete`` check it against the active version (``flux.core.writes.checks``;
   errors name the field), encode it (``flux.core.writes.mutations``) and queue it for group commit
   (``flux.core.writes.commit``).
2. The flusher appends whatever is queued to the log (``flux.core.writes.wal``) with one fdatasync,
   then applies those records in log order to the index that answers searches
   (``flux.core.writes.apply``): the id map grows (``flux_core.storage.ids``), the backend adds or
   deletes, the attributes follow.
3. Only then is the write acknowledged: a search that starts afterwards sees it, and no crash
   can lose it.

Snapshots: after ``snapshot_every`` items written (or on request) the index is saved as the next
version of its source, with the last log sequence it holds (``Manifest.wal_sequence``). The
manager serves that version from the same in-memory index (``IndexManager.publish``), and the
log segments it covers are deleted. Writes wait while a snapshot is written.

Recovery is the manager's ordinary load plus two hooks. ``loaded`` replays the records after a
version's ``wal_sequence`` into it before it may serve (a version whose missing records went
into a snapshot it lacks is refused). ``activating`` applies what was logged since, with writes
paused, so that a swap of versions loses nothing.
"""

from __future__ import annotations

import logging
import re
import shutil
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flux import metrics
from flux.core.serving import versions
from flux.core.serving.index import ServedIndex
from flux.core.serving.manager import IndexManager, VersionHooks
from flux.core.writes.apply import apply_ops
from flux.core.writes.checks import check_ids, check_upsert, immutable_message, writable_source_problem
from flux.core.writes.commit import GroupCommit, Ticket
from flux.core.writes.mutations import Delete, Upsert, decode, encode
from flux.core.writes.wal import Log, LogLocked
from flux_core.backend import Matrix, Metric
from flux_core.errors import FailedPrecondition, FluxError, LogCorrupt, Reason, Unavailable
from flux_core.storage import artifact, builder
from flux_core.storage.attributes import ItemAttributes

log = logging.getLogger(__name__)

_REPLAY_CHUNK = 256  # records applied together while replaying
_STAGING = re.compile(r"^\.\d+\.")  # artifact.write's staging directory of a numbered version


@dataclass(frozen=True)
class WriteSettings:
    """How one index takes writes (``writes`` in its config)."""

    log_dir: Path
    snapshot_every: int = 100_000  # items upserted or deleted; 0: only when asked
    group_commit: bool = True  # False: one fsync per record, the baseline of ``flux bench writes``
    # For a source with no version yet: what the empty version 1 that Flux creates holds.
    backend: str | None = None
    dimension: int | None = None
    metric: Metric | None = None


@dataclass(frozen=True)
class Applied:
    """What one write did, once durable and visible to searches."""

    version: int
    sequence: int
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    missing: int = 0


class Writer(VersionHooks):
    """The write path of one index, and the hooks that keep its versions up to date with its log."""

    def __init__(self, manager: IndexManager, settings: WriteSettings) -> None:
        self.name = manager.name
        self.settings = settings
        self._manager = manager
        self._apply_lock = threading.Lock()  # taken after the manager's operations lock, never before
        self._log: Log | None = None
        self._commit: GroupCommit | None = None
        self._head: ServedIndex | None = None  # the index writes apply to: the active version
        self._applied = 0  # the last record applied to the head (or, before it, found in the log)
        # Per loaded version: the last record applied to it, and the items applied since its snapshot.
        self._positions: weakref.WeakKeyDictionary[ServedIndex, tuple[int, int]] = weakref.WeakKeyDictionary()
        self._since_snapshot = 0
        self._snapshotting = threading.Lock()  # one snapshot at a time; taken before the manager's lock
        self._snapshotter: threading.Thread | None = None
        self._closing = False
        self._read_only = ""  # why writes are refused while searches go on ("" while this server writes)
        self._problem = self._prepare_source(manager.settings.source)
        manager.hooks = self

    # -- the write path ---------------------------------------------------------------------------

    def upsert(
        self, ids: Sequence[str], vectors: Matrix, attributes: Sequence[ItemAttributes] | None = None
    ) -> Applied:
        """Insert or replace items; returns once they are durable and searches see them."""
        result: Applied = self.submit_upsert(ids, vectors, attributes).wait()
        return result

    def delete(self, ids: Sequence[str]) -> Applied:
        """Remove items (ids the index does not hold are counted as missing); returns once durable."""
        result: Applied = self.submit_delete(ids).wait()
        return result

    def submit_upsert(
        self,
        ids: Sequence[str],
        vectors: Matrix,
        attributes: Sequence[ItemAttributes] | None = None,
        *,
        field: str = "",
    ) -> Ticket:
        """Check and queue an upsert without waiting; ``field`` prefixes the field names in errors."""
        index, commit = self._writable(deleting=False)
        check_upsert(index, ids, vectors, attributes, field)
        op = Upsert(list(ids), vectors, attributes)
        return commit.submit(encode(op), op)

    def submit_delete(self, ids: Sequence[str], *, field: str = "") -> Ticket:
        index, commit = self._writable(deleting=True)
        check_ids(ids, f"{field}ids", index.limits.max_batch)
        op = Delete(list(ids))
        return commit.submit(encode(op), op)

    def _writable(self, *, deleting: bool) -> tuple[ServedIndex, GroupCommit]:
        with self._manager.acquire() as index:  # not serving: the same error a search gets
            pass
        if self._read_only:
            raise FailedPrecondition(self._read_only, field="index", reason=Reason.INDEX_READ_ONLY)
        caps = type(index.backend).capabilities
        if not caps.mutable or (deleting and not caps.supports_delete):
            raise FailedPrecondition(
                immutable_message(self.name, index.backend.name), field="index", reason=Reason.INDEX_IMMUTABLE
            )
        commit = self._commit
        if commit is None:
            raise Unavailable(
                f"index {self.name!r} is still loading; retry shortly", field="index", reason=Reason.INDEX_LOADING
            )
        return index, commit

    # -- applying, in log order ---------------------------------------------------------------------

    def _apply(self, tickets: Sequence[Ticket]) -> list[Applied]:
        """The flusher's step after a group is durable: apply it to the head, in order."""
        with self._apply_lock:
            index = self._head
            assert index is not None
            counts = apply_ops(index, [t.op for t in tickets])
            self._applied = tickets[-1].sequence
            version = index.version
            self._since_snapshot += sum(len(t.op.ids) for t in tickets)
            due = 0 < self.settings.snapshot_every <= self._since_snapshot
            if due:
                self._since_snapshot = 0  # a failed snapshot is retried after as many items again
        if due:
            self._snapshot_in_background()
        return [Applied(version, t.sequence, *c) for t, c in zip(tickets, counts, strict=True)]

    def _replay(self, index: ServedIndex, after: int, until: int) -> int:
        """Apply records ``after + 1`` to ``until`` to ``index``; the number of items they held."""
        assert self._log is not None
        started, count, items, chunk = time.perf_counter(), 0, 0, []
        for sequence, payload in self._log.read(after, until):
            try:
                chunk.append(decode(payload))
            except (ValueError, KeyError, TypeError) as exc:
                raise LogCorrupt(
                    f"{self._log.directory}: record {sequence} holds no write Flux can read ({exc})"
                ) from exc
            items += len(chunk[-1].ids)
            if len(chunk) == _REPLAY_CHUNK:
                apply_ops(index, chunk)
                count, chunk = count + len(chunk), []
        if chunk:
            apply_ops(index, chunk)
            count += len(chunk)
        if count:
            log.info(
                "index %r: replayed %d logged writes (%d to %d) onto version %d in %.2fs",
                self.name,
                count,
                after + 1,
                until,
                index.version,
                time.perf_counter() - started,
            )
        return items

    # -- the manager's hooks ----------------------------------------------------------------------------

    def loaded(self, index: ServedIndex) -> None:
        """Replay the log into a freshly loaded version, or refuse the version if that cannot be done."""
        if self._problem:
            raise FailedPrecondition(self._problem)
        if not self._read_only:
            try:
                self._open_log()
            except LogLocked as exc:
                self._go_read_only(exc)
        if self._read_only:  # the version serves as it was saved; the other server's snapshots follow
            self._positions[index] = (index.manifest.wal_sequence, 0)
            return
        wal = self._open_log()
        start, until = index.manifest.wal_sequence, self._applied
        items = 0
        if start < until:
            if start + 1 < wal.first:
                raise FailedPrecondition(
                    f"version {index.version} holds the log up to record {start}, but the log now starts at record "
                    f"{wal.first} (older records went into a later snapshot); serve a newer version"
                )
            if not type(index.backend).capabilities.mutable:
                raise FailedPrecondition(
                    f"{wal.directory} holds writes, but version {index.version} uses the immutable "
                    f"{index.backend.name} backend, which cannot apply them"
                )
            items = self._replay(index, start, until)
        elif start > until and self._commit is not None:
            raise FailedPrecondition(
                f"version {index.version} says it holds log records up to {start}, but the log ends at {until}"
            )
        self._positions[index] = (max(start, until), items)

    @contextmanager
    def activating(self, index: ServedIndex) -> Iterator[None]:
        """Bring ``index`` up to the last applied record, writes paused, and make it the head."""
        if self._read_only:
            yield
            return
        with self._apply_lock:
            prepared = self._positions.get(index)
            if prepared is None:
                raise FailedPrecondition(f"version {index.version} of index {self.name!r} was not prepared for writes")
            position, items = prepared
            if position < self._applied:
                items += self._replay(index, position, self._applied)
                position = self._applied
            yield
            self._head = index
            self._applied = position
            self._since_snapshot = items  # the log it would replay after a restart
            if self._commit is None:
                assert self._log is not None
                self._log.advance(position)
                self._commit = GroupCommit(self._log, self._apply, group=self.settings.group_commit, name=self.name)

    def _go_read_only(self, locked: LogLocked) -> None:
        """Another server writes this index: search what it snapshots, refuse writes, until restarted."""
        self._read_only = (
            f"index {self.name!r} is read-only on this server: another Flux server holds its write-ahead log "
            "and takes its writes; send writes there"
        )
        log.warning(
            "index %r: %s; serving it read-only from the newest version, following that server's snapshots "
            "(restart this server to take writes over once the other one has stopped)",
            self.name,
            locked.message,
        )

    def _open_log(self) -> Log:
        if self._log is None:
            self._log = Log.open(self.settings.log_dir)  # recovery: LogCorrupt fails the version
            self._applied = self._log.last
            # Only the server holding the lock may tidy: another's staging folder may be a snapshot under way.
            self._remove_unfinished_snapshots(self._manager.settings.source)
        return self._log

    # -- snapshots ------------------------------------------------------------------------------------

    def snapshot(self) -> tuple[int, int]:
        """Save the index as the next version now and truncate the log: (version, last record it holds)."""
        if self._read_only:
            raise FailedPrecondition(self._read_only, field="index", reason=Reason.INDEX_READ_ONLY)
        with self._snapshotting:
            head = self._head
            if self._commit is None or head is None:
                raise Unavailable(
                    f"index {self.name!r} is still loading; retry shortly", field="index", reason=Reason.INDEX_LOADING
                )
            if head.manifest.wal_sequence == self._applied:
                return head.version, self._applied  # nothing written since the last snapshot
            return self._snapshot()

    def _snapshot(self) -> tuple[int, int]:
        started = time.perf_counter()
        held = 0

        def save(path: Path, version: int) -> artifact.Manifest:
            nonlocal held
            assert self._log is not None
            with self._apply_lock:
                index, sequence = self._head, self._applied
                assert index is not None
                self._log.rotate()  # records after this snapshot start a segment of their own
                manifest = artifact.write(
                    path,
                    index.backend,
                    index.ids.snapshot(),
                    name=index.manifest.name,
                    version=version,
                    build_params=index.manifest.build_params,
                    wal_sequence=sequence,
                    attributes=index.attributes,
                )
                index.manifest = manifest
            self._log.drop_through(sequence)
            held = sequence
            return manifest

        slot = self._manager.publish(save)
        seconds = time.perf_counter() - started
        metrics.SNAPSHOT_SECONDS.labels(self.name).observe(seconds)
        log.info("index %r: snapshot up to log record %d is version %d (%.2fs)", self.name, held, slot.version, seconds)
        return slot.version, held

    def _snapshot_in_background(self) -> None:
        if self._closing or (self._snapshotter is not None and self._snapshotter.is_alive()):
            return
        self._snapshotter = threading.Thread(target=self._snapshot_quietly, name=f"flux-snapshot-{self.name}")
        self._snapshotter.start()

    def _snapshot_quietly(self) -> None:
        try:
            self.snapshot()
        except FluxError as exc:
            log.error("index %r: snapshot failed: %s", self.name, exc.message)
        except Exception:
            log.exception("index %r: snapshot failed", self.name)

    # -- lifecycle --------------------------------------------------------------------------------------

    def close(self) -> None:
        """Commit what is queued, wait for a snapshot under way, and release the log."""
        self._closing = True
        if self._commit is not None:
            self._commit.close()
        if self._snapshotter is not None:
            self._snapshotter.join()
        if self._log is not None:
            self._log.close()

    def _prepare_source(self, source: Path) -> str:
        """Why the source cannot take writes ("" when it can); creates an empty version 1 when told how."""
        if problem := writable_source_problem(self.name, source):
            return problem
        if versions.scan(source):
            return ""
        s = self.settings
        if s.backend is None or s.dimension is None or s.metric is None:
            log.error(
                "index %r takes writes but %s holds no version: build one (flux build --out %s/1) or give "
                "backend, dimension and metric in its config so that Flux creates an empty one",
                self.name,
                source,
                source,
            )
            return ""
        try:
            builder.build(
                source / "1",
                np.empty((0, s.dimension), np.float32),
                [],
                backend=s.backend,
                metric=s.metric,
                name=self.name,
            )
        except Exception as exc:  # a plugin's own error too: GetIndex and every request must say it
            why = exc.message if isinstance(exc, FluxError) else f"{type(exc).__name__}: {exc}"
            self._manager.source_problem = f"could not create an empty version 1 in {source.name}/: {why}"
            log.error("index %r: %s", self.name, self._manager.source_problem)
        else:
            log.info("index %r: created an empty version 1 in %s", self.name, source)
        return ""

    def _remove_unfinished_snapshots(self, source: Path) -> None:
        """Delete what snapshots cut short by a crash left: ``artifact.write``'s staging directories."""
        if not source.is_dir():
            return
        for staging in source.iterdir():
            if _STAGING.match(staging.name) and staging.is_dir():
                log.warning("index %r: removing %s, a snapshot a crash cut short", self.name, staging)
                shutil.rmtree(staging, ignore_errors=True)
