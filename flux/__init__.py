"""Flux: a gRPC server for nearest-neighbour search over named, versioned vector indexes."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("flux-server")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
