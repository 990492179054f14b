"""Write the tiny committed artifacts that guard Flux's on-disk format against accidental change.

    python tools/make_format_fixtures.py            # writes tests/fixtures/artifacts/v<FORMAT_VERSION>/

Run it only when the artifact format version changes on purpose: the test
tests/test_format_fixtures.py loads the committed artifacts of every version and
expects the answers recorded in expected.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from flux_core.backend import Metric, defaults
from flux_core.storage import artifact, builder

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "artifacts"
#: The backends that ship with Flux; a format change in any of them must be deliberate.
IN_TREE = ("annoy", "exact", "hnsw", "voyager")


def data() -> tuple[np.ndarray, np.ndarray, list[str]]:
    rng = np.random.default_rng(2024)
    vectors = rng.standard_normal((40, 6)).astype(np.float32)
    queries = rng.standard_normal((5, 6)).astype(np.float32)
    return vectors, queries, [f"fixture:{i:02d}" for i in range(40)]


def main() -> int:
    vectors, queries, ids = data()
    out = FIXTURES / f"v{artifact.FORMAT_VERSION}"
    out.mkdir(parents=True, exist_ok=True)
    expected: dict[str, dict[str, object]] = {}
    for backend in IN_TREE:
        path = out / backend
        if path.exists():
            print(f"keeping {path.relative_to(ROOT)}")
        else:
            builder.build(path, vectors, ids, backend=backend, metric=Metric.L2, name=f"fixture-{backend}", threads=1)
            print(f"wrote {path.relative_to(ROOT)}")
        loaded = artifact.load(path)
        params = defaults(type(loaded.backend).search_params)
        labels, distances = loaded.backend.search(queries, 5, params)
        expected[backend] = {"labels": labels.tolist(), "distances": distances.tolist()}
    (out / "expected.json").write_text(json.dumps({"queries": queries.tolist(), "results": expected}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
