"""``flux backends``: the installed backends, where each comes from, what it can do and the params it takes.

Every backend is imported and validated as ``flux build`` and ``flux serve`` would; one that
cannot be is listed with the error they would give (and the command exits 1).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field, fields
from importlib.metadata import entry_points
from typing import Any

from flux_core.backend import Backend, Param
from flux_core.errors import FluxError
from flux_core.storage import registry


def add_parser(commands: Any) -> None:
    parser = commands.add_parser(
        "backends",
        help="list the installed backends: origin, capabilities, params; and why a broken one cannot load",
        description=__doc__,
    )
    parser.add_argument("--json", action="store_true", help="print JSON, one object per backend")
    parser.set_defaults(run=run)


@dataclass
class Listed:
    """One backend name as ``flux backends`` shows it."""

    name: str
    origins: list[str]  # "flux-backends 0.1.0 (flux_backends.hnsw:HnswBackend [hnsw])", one per distribution
    library: str = ""
    capabilities: list[str] = field(default_factory=list)
    build_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    search_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    error: str = ""  # why it cannot be loaded; "" when it can


def listed() -> list[Listed]:
    """Every backend name ``flux build --backend`` accepts, loaded as it would load it."""
    return [_describe(name) for name in registry.names()]


def _describe(name: str) -> Listed:
    found = entry_points(group=registry.GROUP, name=name)
    origins = sorted(
        {
            f"{ep.dist.name} {ep.dist.version} ({ep.value})" if ep.dist is not None else f"entry point {ep.value}"
            for ep in found
        }
    )
    item = Listed(name, origins or ["registered at runtime"])
    try:
        backend = registry.get(name)
        item.library = backend.library_version()
    except FluxError as exc:
        item.error = exc.message
        return item
    except Exception as exc:  # library_version() of a plugin: its bug, shown as such
        item.error = f"backend {name!r}: library_version() failed: {exc!r}"
        return item
    item.capabilities = _capabilities(backend)
    item.build_params = {key: _param(p) for key, p in backend.build_params.items()}
    item.search_params = {key: _param(p) for key, p in backend.search_params.items()}
    return item


def _capabilities(backend: type[Backend]) -> list[str]:
    caps = backend.capabilities
    return [f.name for f in fields(caps) if getattr(caps, f.name) is True]


def _param(param: Param) -> dict[str, Any]:
    kind = int if param.integer else float
    return {
        "default": kind(param.default),
        "minimum": kind(param.minimum),
        "maximum": kind(param.maximum),
        "integer": param.integer,
        "doc": param.doc,
    }


def run(args: argparse.Namespace) -> int:
    items = listed()
    if args.json:
        print(json.dumps([vars(item) for item in items], indent=2))
    else:
        _print(items)
    broken = [item.name for item in items if item.error]
    if broken:
        print(f"flux backends: {len(broken)} of {len(items)} cannot be loaded: {', '.join(broken)}", file=sys.stderr)
    return 1 if broken else 0


def _print(items: list[Listed]) -> None:
    for item in items:
        print(f"{item.name}: {'; '.join(item.origins)}")
        if item.error:
            print(f"  BROKEN        {item.error}")
            continue
        print(f"  library       {item.library}")
        print(f"  capabilities  {', '.join(item.capabilities) or 'none'}")
        for kind, params in (("build", item.build_params), ("search", item.search_params)):
            if not params:
                print(f"  {kind + ' params':<13} none")
                continue
            width = max(len(name) for name in params)
            for i, (name, p) in enumerate(params.items()):
                label = f"{kind} params" if i == 0 else ""
                bounds = f"{_num(p['default'])}  ({_num(p['minimum'])} to {_num(p['maximum'])}"
                bounds += ")" if p["integer"] else ", real)"
                print(f"  {label:<13} {name:<{width}}  {bounds:<28} {p['doc']}")


def _num(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"
