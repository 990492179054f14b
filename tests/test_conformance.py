"""The shipped conformance kit, run against every in-tree backend exactly as a plugin author would."""

from flux.testing import conformance_suite
from flux_core.storage import registry

TestExact = conformance_suite(registry.get("exact"), min_recall=1.0)
TestHnsw = conformance_suite(registry.get("hnsw"))
TestAnnoy = conformance_suite(registry.get("annoy"))
TestVoyager = conformance_suite(registry.get("voyager"))
TestFaiss = conformance_suite(registry.get("faiss"))
TestFaissIvf = conformance_suite(registry.get("faiss-ivf"))
