"""Finds backends: the ``flux.backends`` entry point group, plus runtime registrations.

A distribution adds a backend with one line in its pyproject.toml::

    [project.entry-points."flux.backends"]
    mybackend = "my_package.module:MyBackend"

Flux's own backends are registered exactly this way. Loading validates the plugin
and every error names the plugin and the distribution it came from.
"""

from __future__ import annotations

import threading
from importlib.metadata import EntryPoint, entry_points

from flux_core.backend import SUPPORTED_API_VERSIONS, Backend
from flux_core.errors import BackendError, NotFound

GROUP = "flux.backends"

_lock = threading.Lock()
_registered: dict[str, type[Backend]] = {}  # runtime registrations, for tests and embedding
_loaded: dict[str, type[Backend]] = {}  # entry points already imported and validated


def register(name: str, backend: type[Backend], *, replace: bool = False) -> None:
    """Register ``backend`` under ``name`` without packaging it (tests, notebooks).

    A name that an installed plugin or an earlier registration already uses is refused
    unless ``replace`` is true.
    """
    validate(name, backend, origin="register()")
    with _lock:
        if not replace and (name in _registered or _entry_points(name)):
            raise BackendError(f"backend name {name!r} is already taken; pass replace=True to override it")
        _registered[name] = backend
        _loaded.pop(name, None)


def unregister(name: str) -> None:
    """Remove a runtime registration (installed plugins stay)."""
    with _lock:
        _registered.pop(name, None)


def names() -> list[str]:
    """Every backend name that ``get`` may resolve, installed or registered."""
    return sorted({ep.name for ep in entry_points(group=GROUP)} | set(_registered))


def get(name: str) -> type[Backend]:
    """Return the backend class called ``name``, importing and validating it on first use."""
    with _lock:
        if name in _registered:
            return _registered[name]
        if name in _loaded:
            return _loaded[name]
        found = _entry_points(name)
        if not found:
            known = ", ".join(names()) or "none"
            raise NotFound(f"no backend named {name!r} is installed (installed: {known})", field="backend")
        if len(found) > 1:
            where = " and ".join(_origin(ep) for ep in found)
            raise BackendError(f"backend name {name!r} is declared twice, by {where}; uninstall one of them")
        backend = _import(found[0])
        _loaded[name] = backend
        return backend


def _entry_points(name: str) -> list[EntryPoint]:
    # The same distribution can be visible twice (an editable install seen through two
    # paths); count each distribution once.
    unique = {(_origin(ep), ep.value): ep for ep in entry_points(group=GROUP, name=name)}
    return list(unique.values())


def _origin(ep: EntryPoint) -> str:
    dist = ep.dist
    return f"distribution {dist.name} {dist.version}" if dist is not None else f"entry point {ep.value}"


def _import(ep: EntryPoint) -> type[Backend]:
    origin = f"backend {ep.name!r} ({ep.value}, from {_origin(ep)})"
    try:
        backend = ep.load()
    except ImportError as exc:
        hint = ""
        if ep.dist is not None and ep.extras:
            hint = f"; install it with: pip install '{ep.dist.name}[{','.join(ep.extras)}]'"
        elif exc.name:
            hint = f"; install the missing package {exc.name!r}"
        raise BackendError(f"{origin} could not be imported: {exc}{hint}") from exc
    except Exception as exc:  # a plugin's import-time bug must not read as Flux's
        raise BackendError(f"{origin} failed while importing: {exc!r}") from exc
    validate(ep.name, backend, origin=origin)
    return backend  # type: ignore[no-any-return]


def validate(name: str, backend: object, *, origin: str) -> None:
    """Refuse a plugin that is not a complete Backend subclass under its own name and a supported API version."""
    if not isinstance(backend, type) or not issubclass(backend, Backend):
        raise BackendError(f"{origin} is {backend!r}, not a subclass of flux_core.backend.Backend")
    abstract = sorted(getattr(backend, "__abstractmethods__", ()))
    if abstract:
        raise BackendError(f"{origin} does not implement {', '.join(abstract)}")
    if getattr(backend, "name", None) != name:
        raise BackendError(f"{origin} declares name {getattr(backend, 'name', None)!r}, but is registered as {name!r}")
    if backend.api_version not in SUPPORTED_API_VERSIONS:
        supported = ", ".join(map(str, sorted(SUPPORTED_API_VERSIONS)))
        raise BackendError(
            f"{origin} implements backend API version {backend.api_version}; this Flux supports {supported}"
        )
