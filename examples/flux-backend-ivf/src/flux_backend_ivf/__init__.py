"""An IVF-flat backend for Flux, in pure numpy.

Installed, it is found through the ``flux.backends`` entry point in pyproject.toml, so
``flux build --backend ivf`` and ``flux serve`` use it with no change to Flux.
"""

from flux_backend_ivf.backend import IvfBackend

__all__ = ["IvfBackend"]
