"""Flux's conformance kit against the ivf backend: "the backend works" means this passes."""

from flux.testing import conformance_suite

from flux_backend_ivf import IvfBackend

TestIvf = conformance_suite(IvfBackend, min_recall=0.9)
