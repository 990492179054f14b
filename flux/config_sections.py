"""The sections of a config file, one strict pydantic model each: server, limits, indexes, aliases, tls,
auth, logging and tracing (the router section is flux.router.config's).

A section checks only its own keys: an unknown key or a value out of range fails validation. The rules
across sections, reading the file and wording the errors are flux.config's, which puts the sections
together into FluxConfig.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from flux.core.serving.gate import GateConfig
from flux.core.serving.index_settings import IndexSettings
from flux.core.serving.versions import Policy
from flux.core.writes.writer import WriteSettings
from flux_core.backend import Metric

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_name(value: str) -> str:
    """``value`` when it is a valid index, alias or shard-group name (the config's and the router's)."""
    if not _NAME.match(value):
        raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
    return value


class Strict(BaseModel):
    """A config section: unknown keys are errors, and the parsed section cannot change."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(Strict):
    """Where and how the gRPC server listens."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    threads: int = Field(16, ge=1, le=1024, description="gRPC handler threads")
    search_threads: int = Field(
        0, ge=0, le=256, description="library threads for one batch search; 0 means one per CPU"
    )
    grace_seconds: float = Field(10.0, ge=0, description="how long in-flight calls may finish on shutdown")
    swap_cpu_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="the share of one CPU that readying a new version (checksums, warm-up, canary) takes while "
        "the index answers requests: it works in short slices and sleeps between them; 1: no pacing",
    )
    malloc_arenas: int = Field(
        2,
        ge=0,
        le=1024,
        description="malloc arenas glibc may keep in the server process: each thread that allocates gets its "
        "own and keeps what is freed into it, so fewer hold less memory; 0: glibc's default (8 per CPU); the "
        "MALLOC_ARENA_MAX environment variable, when set, wins",
    )
    blas_threads: int = Field(
        1,
        ge=0,
        le=1024,
        description="threads each of numpy's BLAS matrix products may use in the server: calls already "
        "run on handler threads of their own, and a product split over more threads than the server has CPUs "
        "(pinned, or a container's share) makes them wait on one another; 0: the library's default (one per "
        "CPU it sees); the OPENBLAS_NUM_THREADS environment variable, when set, wins",
    )
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="server processes sharing the port (SO_REUSEPORT, Linux), forked once the indexes have "
        "loaded so that they share their memory (a version swapped in later is loaded by each); clients need "
        "several connections to use them all",
    )
    memory_budget_bytes: int = Field(
        0, ge=0, description="loaded versions may take this much (estimated from artifact sizes); 0: no limit"
    )
    max_concurrent_calls: int = Field(
        64,
        ge=0,
        le=100_000,
        description="calls admitted at once per worker process (running or waiting for a thread); beyond it "
        "a call gets RESOURCE_EXHAUSTED at once instead of queueing; 0: no limit",
    )
    max_streams: int | None = Field(
        None,
        ge=0,
        le=100_000,
        description="streams (StreamSearch, UpsertStream, health Watch) open at once per worker process, each "
        "holding a handler thread while it lasts; beyond it a new stream gets RESOURCE_EXHAUSTED at once; "
        "default: half of threads (at least 1), so that streams leave threads to unary calls; 0: no limit",
    )
    metrics_port: int | None = Field(None, ge=0, le=65535, description="Prometheus /metrics; 0 picks a free port")
    health_port: int | None = Field(
        None, ge=0, le=65535, description="a plaintext port answering only grpc.health.v1 (probes when TLS is on)"
    )
    data_root: Path | None = Field(None, description="every index path and version must resolve inside it")

    @model_validator(mode="after")
    def _streams_leave_threads(self) -> ServerConfig:
        if self.max_streams is not None and self.max_streams > self.threads:
            raise ValueError(
                f"max_streams ({self.max_streams}) is more than threads ({self.threads}): a stream holds a handler "
                "thread while it is open, so at most threads of them can run; lower it, or raise threads"
            )
        return self

    @property
    def stream_limit(self) -> int:
        """Streams open at once (0: no limit): ``max_streams``, or half of ``threads``, at least 1."""
        return max(1, self.threads // 2) if self.max_streams is None else self.max_streams


class LimitsConfig(Strict):
    """Request limits; a request beyond them gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED."""

    max_k: int = Field(1024, ge=1, le=100_000)
    max_batch: int = Field(1024, ge=1, le=1_000_000)
    max_message_bytes: int = Field(
        64 * 1024 * 1024,
        ge=1024,
        le=2**31 - 1,
        description="largest request and answer; an answer above it is RESOURCE_EXHAUSTED naming this limit",
    )
    max_id_bytes: int = Field(
        1024,
        ge=1,
        le=65_536,
        description="longest id an upsert may store, in UTF-8 bytes (INVALID_ARGUMENT beyond it); answers carry "
        "k ids per query, so long ids make every reader's answers large. 1024 holds URLs and object-store keys",
    )


class VersionsConfig(Strict):
    """Which versions of an index to serve: the newest, or an explicit list."""

    policy: Literal["latest", "specific"] = "latest"
    keep: int = Field(1, ge=1, le=100, description="latest: how many of the newest versions stay loaded")
    versions: list[int] = Field(default_factory=list, description="specific: the versions to load")

    @model_validator(mode="after")
    def _versions_match_policy(self) -> VersionsConfig:
        if self.policy == "specific" and not self.versions:
            raise ValueError("the specific policy needs a non-empty versions list")
        if self.policy == "latest" and self.versions:
            raise ValueError("versions is only for the specific policy")
        return self


class GateSettings(Strict):
    """The activation gate a new version must pass before it answers queries."""

    warmup_queries: int = Field(32, ge=0, le=100_000)
    canary_queries: int = Field(0, ge=0, le=100_000, description="0 turns the canary off")
    k: int = Field(10, ge=1, le=1000)
    min_recall: float = Field(0.0, ge=0, le=1, description="recall@k against exact search")
    min_overlap: float = Field(0.0, ge=0, le=1, description="overlap@k with the version being replaced")


class WritesConfig(Strict):
    """Upserts and deletes through WriteService, made durable by a write-ahead log (docs/writes.md)."""

    enabled: bool = False
    snapshot_every: int = Field(
        100_000, ge=0, description="write the index as a new version after this many items written; 0: on request"
    )
    group_commit: bool = Field(
        True, description="concurrent writes share one fsync; false: one fsync per write (for benchmarks)"
    )


class IndexConfig(Strict):
    """One index to serve.

    ``path`` is a source directory holding one artifact per version (``<path>/<version>/``),
    or a single artifact written by ``flux build``. ``backend``, ``dimension`` and ``metric``
    are optional expectations: when given, a version must match them or it is refused.
    """

    name: str
    path: Path
    backend: str | None = None
    dimension: int | None = Field(None, ge=1, le=65_536)
    metric: Metric | None = None
    search_params: dict[str, float] = Field(default_factory=dict)
    versions: VersionsConfig = VersionsConfig()
    poll_seconds: float = Field(30.0, ge=0, description="how often to look for new versions; 0: never")
    gate: GateSettings = GateSettings()
    writes: WritesConfig = WritesConfig()

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _writes_follow_the_newest_version(self) -> IndexConfig:
        if self.writes.enabled and (self.versions.policy != "latest" or self.versions.keep != 1):
            raise ValueError(
                "writes.enabled needs versions.policy latest with keep 1 (writes go to the newest version)"
            )
        return self

    def write_settings(self) -> WriteSettings | None:
        """How the index takes writes, or None when it does not; its log lives in ``<path>/wal``."""
        if not self.writes.enabled:
            return None
        return WriteSettings(
            log_dir=self.path / "wal",
            snapshot_every=self.writes.snapshot_every,
            group_commit=self.writes.group_commit,
            backend=self.backend,
            dimension=self.dimension,
            metric=self.metric,
        )

    def settings(self, data_root: Path | None = None) -> IndexSettings:
        """The index in the core's terms; its versions must stay inside ``data_root`` when one is set."""
        return IndexSettings(
            name=self.name,
            source=self.path,
            policy=Policy(self.versions.policy, self.versions.keep, tuple(self.versions.versions)),
            gate=GateConfig(**self.gate.model_dump()),
            search_params=dict(self.search_params),
            backend=self.backend,
            dimension=self.dimension,
            metric=self.metric,
            data_root=data_root,
        )


class ArmConfig(Strict):
    index: str
    weight: float = Field(100.0, gt=0)
    version: int = Field(0, ge=0, description="0: the index's active version")


class AliasConfig(Strict):
    """A stable name routing to one or two indexes (an experiment), split by weight."""

    name: str
    arms: list[ArmConfig] = Field(min_length=1, max_length=2)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)


class TLSConfig(Strict):
    """TLS on the gRPC port; with ``client_ca_file``, mutual TLS (clients must present a certificate)."""

    cert_file: Path = Field(description="PEM certificate chain of the server")
    key_file: Path = Field(description="PEM private key of the server")
    client_ca_file: Path | None = Field(None, description="PEM CA certificates that sign client certificates")


class TokenConfig(Strict):
    """A bearer token, by its SHA-256 digest (``flux token hash``); the token itself is never configured."""

    name: str = Field(description="names the token in logs and errors")
    role: Literal["reader", "writer", "admin"]
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="lowercase hex SHA-256 of the token")

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)


class AuthConfig(Strict):
    """Token authentication: on when at least one token is listed."""

    tokens: list[TokenConfig] = Field(default_factory=list)
    open_index_health: bool = Field(
        False,
        description="with tokens listed, answer the health of one index (flux.index.<name>) without a token, "
        "for probes that send none; the server's health stays open either way",
    )

    @model_validator(mode="after")
    def _distinct(self) -> AuthConfig:
        for i, token in enumerate(self.tokens):
            if any(t.name == token.name for t in self.tokens[:i]):
                raise ValueError(f"tokens[{i}].name: {token.name!r} is used by an earlier token")
            if any(t.sha256 == token.sha256 for t in self.tokens[:i]):
                raise ValueError(f"tokens[{i}].sha256: the same token is listed twice")
        return self


class LoggingConfig(Strict):
    format: Literal["text", "json"] = Field("text", description="json: one JSON object per line on stderr")
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] | None = Field(
        None, description="default: $FLUX_LOG_LEVEL, else INFO"
    )
    requests: bool = Field(False, description="one record per call: request id, method, index, code, latency")


class TracingConfig(Strict):
    enabled: bool = Field(False, description="OpenTelemetry spans per call (the tracing extra)")
    service_name: str = "flux"
