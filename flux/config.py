"""Server configuration: a YAML file, validated once at start-up.

Every error names the file and the key at fault, e.g.
``flux.yaml: indexes[0].metric: Input should be 'l2', 'cosine' or 'ip'``.
Unknown keys are errors too, so a typo never silently falls back to a default.
``FLUX_SERVER__PORT=6000``-style environment variables override keys (flux.config_env).
The models of the sections are in flux.config_sections; this module puts them together and reads files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from flux import config_env
from flux.config_sections import (
    AliasConfig,
    AuthConfig,
    IndexConfig,
    LimitsConfig,
    LoggingConfig,
    ServerConfig,
    Strict,
    TLSConfig,
    TracingConfig,
)
from flux.router.config import RouterConfig
from flux_core.errors import ConfigError
from flux_core.storage import confine

__all__ = ["FluxConfig", "IndexConfig", "TLSConfig", "TracingConfig", "load", "parse", "with_environment"]


class FluxConfig(Strict):
    """The whole configuration file."""

    server: ServerConfig = ServerConfig()
    limits: LimitsConfig = LimitsConfig()
    indexes: list[IndexConfig] = Field(default_factory=list)
    aliases: list[AliasConfig] = Field(default_factory=list)
    tls: TLSConfig | None = None
    auth: AuthConfig = AuthConfig()
    logging: LoggingConfig = LoggingConfig()
    tracing: TracingConfig = TracingConfig()
    #: A router serves the logical indexes listed here from shard servers, and none of its own (flux.router).
    router: RouterConfig | None = None

    @model_validator(mode="after")
    def _router_serves_no_index(self) -> FluxConfig:
        if self.router is not None and (self.indexes or self.aliases):
            raise ValueError("router: a router serves no indexes or aliases of its own; list them on the shards")
        return self

    @model_validator(mode="after")
    def _one_writer_per_index(self) -> FluxConfig:
        for i, index in enumerate(self.indexes):
            if index.writes.enabled and self.server.workers > 1:
                raise ValueError(
                    f"indexes[{i}].writes: an index that takes writes needs server.workers 1 "
                    "(each worker process would keep a log of its own)"
                )
        return self

    @model_validator(mode="after")
    def _unique_names(self) -> FluxConfig:
        seen: set[str] = set()
        for i, index in enumerate(self.indexes):
            if index.name in seen:
                raise ValueError(f"indexes[{i}].name: {index.name!r} is used by an earlier index")
            seen.add(index.name)
        indexes = set(seen)
        for i, alias in enumerate(self.aliases):
            if alias.name in seen:
                raise ValueError(f"aliases[{i}].name: {alias.name!r} is already the name of an index or alias")
            seen.add(alias.name)
            for j, arm in enumerate(alias.arms):
                if arm.index not in indexes:
                    raise ValueError(f"aliases[{i}].arms[{j}].index: no index named {arm.index!r} is configured")
        return self


def load(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> FluxConfig:
    """Read and validate a YAML config file, with ``FLUX_A__B`` overrides from ``environ`` (default: the
    process environment; see flux.config_env). Relative paths resolve against the file's folder."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: unreadable: {exc}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    raw = raw if raw is not None else {}
    origins: dict[str, str] = {}
    if isinstance(raw, dict):
        raw, origins = config_env.apply(raw, os.environ if environ is None else environ)
    return parse(raw, source=str(path), base=path.parent, origins=origins)


def with_environment(config: FluxConfig, *, source: str, environ: Mapping[str, str] | None = None) -> FluxConfig:
    """``config`` with the ``FLUX_A__B`` overrides of ``environ`` (default: the process environment) applied, as
    ``load`` applies them to a file: for configs made in code, such as the built-in demo's. Only the keys the
    config sets and the ones the environment sets are given, so every default stays a default."""
    raw = config.model_dump(mode="json", exclude_unset=True)
    raw, origins = config_env.apply(raw, os.environ if environ is None else environ)
    if not origins:
        return config
    return parse(raw, source=source, origins=origins)


def parse(
    raw: Any, *, source: str = "<config>", base: Path | None = None, origins: Mapping[str, str] | None = None
) -> FluxConfig:
    """Validate an already-parsed mapping; ``source`` names it in errors, ``origins`` the variables that set keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with keys server, limits, indexes")
    try:
        config = FluxConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: " + "; ".join(_describe(e, origins or {}) for e in exc.errors())) from None
    if base is not None:
        config = _relative_to(base, config)
    _confine(config, source)
    return config


def _relative_to(base: Path, config: FluxConfig) -> FluxConfig:
    """Relative paths (indexes, data root, TLS files, the router's too) taken from ``base``, the config file's
    folder."""

    def where(path: Path) -> Path:
        return path if path.is_absolute() else base / path

    indexes = [i.model_copy(update={"path": where(i.path)}) for i in config.indexes]
    server = config.server
    if server.data_root is not None:
        server = server.model_copy(update={"data_root": where(server.data_root)})
    tls = config.tls
    if tls is not None:
        files = {"cert_file": where(tls.cert_file), "key_file": where(tls.key_file)}
        if tls.client_ca_file is not None:
            files["client_ca_file"] = where(tls.client_ca_file)
        tls = tls.model_copy(update=files)
    router = config.router
    if router is not None and router.tls is not None:
        shard_files = {"ca_file": where(router.tls.ca_file)}
        for key in ("cert_file", "key_file"):
            if (path := getattr(router.tls, key)) is not None:
                shard_files[key] = where(path)
        router = router.model_copy(update={"tls": router.tls.model_copy(update=shard_files)})
    return config.model_copy(update={"indexes": indexes, "server": server, "tls": tls, "router": router})


def _confine(config: FluxConfig, source: str) -> None:
    """Every index path must lead (after symlinks) into server.data_root, when it is set."""
    root = config.server.data_root
    if root is None:
        return
    for i, index in enumerate(config.indexes):
        real = confine.escape(index.path, root)
        if real is not None:
            raise ConfigError(
                f"{source}: indexes[{i}].path: {index.path} resolves to {real}, outside server.data_root {root}"
            )


def _describe(error: Any, origins: Mapping[str, str]) -> str:
    key = ""
    for part in error["loc"]:
        key += f"[{part}]" if isinstance(part, int) else (f".{part}" if key else str(part))
    message = str(error["msg"]).removeprefix("Value error, ")
    if error["type"] == "extra_forbidden":
        message = "unknown key (check its spelling)"
    origin = next((v for k, v in origins.items() if key and (key == k or _within(key, k) or _within(k, key))), None)
    if origin:
        message += f" (set by the environment variable {origin})"
    return f"{key}: {message}" if key else message


def _within(key: str, section: str) -> bool:
    return key.startswith((section + ".", section + "["))
