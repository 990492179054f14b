"""Server configuration: a YAML file, validated once at start-up.

Every error names the file and the key at fault, e.g.
``flux.yaml: indexes[0].metric: Input should be 'l2', 'cosine' or 'ip'``.
Unknown keys are errors too, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from flux.core.backend import Metric
from flux.errors import ConfigError

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerConfig(_Strict):
    """Where and how the gRPC server listens."""

    host: str = "127.0.0.1"
    port: int = Field(50051, ge=0, le=65535, description="0 picks a free port")
    threads: int = Field(16, ge=1, le=1024, description="gRPC handler threads")
    search_threads: int = Field(
        0, ge=0, le=256, description="library threads for one batch search; 0 means one per CPU"
    )
    grace_seconds: float = Field(10.0, ge=0, description="how long in-flight calls may finish on shutdown")


class LimitsConfig(_Strict):
    """Request limits; a request beyond them gets INVALID_ARGUMENT or RESOURCE_EXHAUSTED."""

    max_k: int = Field(1024, ge=1, le=100_000)
    max_batch: int = Field(1024, ge=1, le=1_000_000)
    max_message_bytes: int = Field(64 * 1024 * 1024, ge=1024, le=2**31 - 1)


class IndexConfig(_Strict):
    """One index to serve: an artifact directory written by ``flux build``.

    ``backend``, ``dimension`` and ``metric`` are optional expectations: when given,
    the artifact must match them or the index is refused at load.
    """

    name: str
    path: Path
    backend: str | None = None
    dimension: int | None = Field(None, ge=1, le=65_536)
    metric: Metric | None = None
    search_params: dict[str, float] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        if not _NAME.match(value):
            raise ValueError("must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit")
        return value


class FluxConfig(_Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    indexes: list[IndexConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> FluxConfig:
        seen: set[str] = set()
        for i, index in enumerate(self.indexes):
            if index.name in seen:
                raise ValueError(f"indexes[{i}].name: {index.name!r} is used by an earlier index")
            seen.add(index.name)
        return self


def load(path: str | os.PathLike[str]) -> FluxConfig:
    """Read and validate a YAML config file. Relative index paths resolve against the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    return parse(raw if raw is not None else {}, source=str(path), base=path.parent)


def parse(raw: Any, *, source: str = "<config>", base: Path | None = None) -> FluxConfig:
    """Validate an already-parsed mapping; ``source`` names it in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys server, limits, indexes")
    try:
        config = FluxConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e) for e in exc.errors())) from None
    if base is not None:
        indexes = [
            i.model_copy(update={"path": (base / i.path)}) if not i.path.is_absolute() else i for i in config.indexes
        ]
        config = config.model_copy(update={"indexes": indexes})
    return config


def _describe(error: Any) -> str:
    key = ""
    for part in error["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling)"
    return f"{key}: {message}" if key else message
