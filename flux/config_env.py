"""Environment overrides of config keys: ``FLUX_<KEY>__<KEY>...=<value>``.

Nested keys are joined by a double underscore and matched case-insensitively; a number
picks a list entry that the file already has. The value is read as YAML, so numbers,
booleans and lists keep their types::

    FLUX_SERVER__PORT=6000                 -> server.port: 6000
    FLUX_LOGGING__FORMAT=json              -> logging.format: json
    FLUX_INDEXES__0__PATH=/data/tracks     -> indexes[0].path: /data/tracks

Variables without a double underscore (FLUX_LOG_LEVEL, say) are not overrides.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import yaml

from flux_core.errors import ConfigError

PREFIX = "FLUX_"
SEPARATOR = "__"


def apply(raw: Mapping[str, Any], environ: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, str]]:
    """``raw`` with every override applied, and the variable that set each key (``server.port``: its name)."""
    result: dict[str, Any] = copy.deepcopy(dict(raw))
    origins: dict[str, str] = {}
    for variable in sorted(environ):
        if not variable.upper().startswith(PREFIX) or SEPARATOR not in variable:
            continue
        parts = variable[len(PREFIX) :].split(SEPARATOR)
        if not all(parts):
            raise ConfigError(f"environment {variable}: empty key between '{SEPARATOR}' separators")
        try:
            value = yaml.safe_load(environ[variable]) if environ[variable] else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"environment {variable}: not a valid YAML value: {exc}") from None
        origins[_set(result, parts, value, variable)] = variable
    return result, origins


def _set(node: Any, parts: list[str], value: Any, variable: str) -> str:
    key = ""
    for position, part in enumerate(parts):
        last = position == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"environment {variable}: {key} has no entry {part} (it has {len(node)})")
            index = int(part)
            key += f"[{index}]"
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"environment {variable}: {key} is a single value, not a section")
        name = part.lower()
        key += f".{name}" if key else name
        if last:
            node[name] = value
        else:
            node = node.setdefault(name, {})
    return key
