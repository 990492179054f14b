"""The ``router:`` section of a config: the logical indexes a router serves and the shard groups behind each.

A router serves no index of its own. Each logical index names, in shard order, one gRPC target per
shard (``dns:///flux-shard-2.flux.svc:50051``: every replica of the shard behind one name, balanced
round-robin), the shard count (which must match, as the sharding function depends on it), the index's
name on the shards, and what to do when a shard does not answer (``on_missing_shards``). With ``tls``,
the router reaches its shards over TLS (shard servers with a ``tls:`` section), presenting a
certificate of its own to shards that require one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from flux.config_sections import Strict, check_name
from flux_core.storage.sharded import shard_name


class RetryConfig(Strict):
    """gRPC's own retries to a shard's other replicas (the channel's service config ``retryPolicy``)."""

    max_attempts: int = Field(3, ge=1, le=5, description="attempts per shard call, the first included; 1: no retry")
    initial_backoff_seconds: float = Field(0.02, gt=0, le=10)
    max_backoff_seconds: float = Field(0.2, gt=0, le=60)


class HedgingConfig(Strict):
    """A second call to a shard (the next replica, round-robin) when the first has not answered after ``delay``.

    The first answer wins and the other call is cancelled. Off by default: it costs a second search
    on every slow call. Done by the router, as gRPC Python (C-core) does not implement the service
    config's ``hedgingPolicy``.
    """

    enabled: bool = False
    delay_seconds: float = Field(0.05, gt=0, le=60)


class ShardTLSConfig(Strict):
    """TLS from the router to every shard: the shards' certificates checked against ``ca_file``; with
    ``cert_file`` and ``key_file``, the router presents its own, for shards that require a client
    certificate (their ``tls.client_ca_file``). The files are PEM, as in the server's ``tls`` section."""

    ca_file: Path = Field(description="PEM CA certificates that sign the shards' certificates")
    cert_file: Path | None = Field(None, description="PEM certificate chain the router presents to the shards")
    key_file: Path | None = Field(None, description="PEM private key of cert_file")
    server_name: str = Field(
        "",
        description="the name the shards' certificates carry, when it is not the target's host name "
        "(a static ipv4: list, say); empty: the target's host name",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> ShardTLSConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file go together: set both for a client certificate, or neither")
        return self


class RoutedIndex(Strict):
    """One logical index served over shard groups."""

    name: str = Field(description="the name callers use")
    shard_index: str = Field("", description="the index's name on the shards; empty: the same name")
    shard_count: int = Field(ge=1, le=4096, description="how many shards the version was split into")
    shards: list[str] = Field(
        min_length=1,
        description="one gRPC target per shard, in shard order: dns:///flux-shard-0.flux.svc:50051, or a static "
        "list of replicas ipv4:10.0.0.1:50051,10.0.0.2:50051",
    )
    on_missing_shards: Literal["fail", "partial"] = Field(
        "fail",
        description="fail: UNAVAILABLE naming the shards that did not answer; partial: the others' answer, "
        "naming them in missing_shards",
    )
    sharded_by: Literal["id", "crowding_tag"] = Field(
        "id",
        description="the key the version was sharded by: id, or the crowding tag (then a tag's items share a shard, "
        "so each shard's crowding cap is the whole index's)",
    )

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        return check_name(value)

    @field_validator("shard_index")
    @classmethod
    def _valid_shard_index(cls, value: str) -> str:
        return check_name(value) if value else value

    @field_validator("shards")
    @classmethod
    def _targets(cls, value: list[str]) -> list[str]:
        for i, target in enumerate(value):
            if not target.strip() or target != target.strip():
                raise ValueError(f"[{i}] must be a gRPC target without surrounding spaces")
        return value

    @model_validator(mode="after")
    def _one_target_per_shard(self) -> RoutedIndex:
        if len(self.shards) != self.shard_count:
            raise ValueError(f"shards lists {len(self.shards)} targets, shard_count is {self.shard_count}")
        return self

    @property
    def on_shards(self) -> str:
        """The index's name on the shards."""
        return self.shard_index or self.name

    def shard_names(self) -> list[str]:
        """Each shard's name in answers and errors: ``shard-00002-of-00004``, as its folder in a sharded version."""
        return [shard_name(i, self.shard_count) for i in range(self.shard_count)]


class RouterConfig(Strict):
    """A router: serves VectorService for logical indexes split over shard servers (docs/scale.md)."""

    indexes: list[RoutedIndex] = Field(min_length=1)
    default_timeout_seconds: float = Field(
        5.0, gt=0, le=3600, description="the deadline of a call whose caller set none"
    )
    deadline_margin: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="the share of the caller's remaining time kept back from the shards, to merge and answer "
        "(a partial answer or the UNAVAILABLE naming the shards) before the caller's deadline",
    )
    retries: RetryConfig = RetryConfig()
    hedging: HedgingConfig = HedgingConfig()
    tls: ShardTLSConfig | None = Field(None, description="TLS to the shards; none: plaintext")

    @model_validator(mode="after")
    def _unique(self) -> RouterConfig:
        seen: set[str] = set()
        for i, index in enumerate(self.indexes):
            if index.name in seen:
                raise ValueError(f"indexes[{i}].name: {index.name!r} is used by an earlier index")
            seen.add(index.name)
        return self
