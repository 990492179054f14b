"""Flux's backend conformance kit (needs the ``flux-server[testing]`` extra: pytest, hypothesis).

A backend package runs it from its own test suite::

    from flux.testing import conformance_suite
    from my_package import MyBackend

    TestMyBackend = conformance_suite(MyBackend)

"A backend works" means this suite passes. See backends/README.md.
"""

from flux.testing.kit import conformance_suite
from flux.testing.oracle import brute_force, distances, recall

__all__ = ["brute_force", "conformance_suite", "distances", "recall"]
