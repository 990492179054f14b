"""A real Flux server for the tests of services that call Flux: the ``flux_server`` fixture.

A mock written by hand drifts from the server (error codes, padding, packed answers, version
fields); a real server on 127.0.0.1 starts in well under a second for a small index. Installed
with ``flux-server[testing]``, this module is a pytest plugin (entry point group ``pytest11``),
so the fixtures need no import::

    def test_candidates(flux_server):
        hits = flux_server.client.search("demo", query, k=5)

Override ``flux_indexes`` to serve your own vectors, or call ``serve()`` for any other scope or
for TLS and tokens. Every file the server needs lives in a temporary folder removed at teardown.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt
import pytest

if TYPE_CHECKING:
    from flux_client import TLS, FluxClient
    from flux_core.storage.attributes import ItemAttributes

DEMO = "demo"
DEMO_COUNT, DEMO_DIMENSION = 1_000, 16
SERVER_NAME = "localhost"


@dataclass(frozen=True)
class TestIndex:
    """An index the test server builds from the test's own data (exact search by default)."""

    __test__ = False  # not a test class, whatever its name

    vectors: npt.ArrayLike
    ids: Sequence[str] | None = None  # default "0", "1", ...
    attributes: Sequence[ItemAttributes] | None = None  # restricts and crowding tags, one per vector
    backend: str = "exact"
    metric: str = "cosine"
    params: Mapping[str, float] | None = None


@dataclass(frozen=True)
class ServerTLS:
    """TLS for the test server: its certificate and key (PEM, valid for ``server_name``) and the CA that signed them."""

    cert_file: Path
    key_file: Path
    ca_file: Path
    server_name: str = SERVER_NAME


@dataclass
class RunningFlux:
    """A started test server: its address, a connected client, and how to connect others."""

    address: str
    token: str | None = None  # the token ``client`` sends
    tls: ServerTLS | None = None
    client: FluxClient = field(init=False)
    _clients: list[FluxClient] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        self.client = self.connect(token=self.token)

    def connect(self, *, token: str | None = None, **options: Any) -> FluxClient:
        """Another client of this server (another token, other timeouts); closed at teardown."""
        from flux_client import FluxClient

        client = FluxClient(self.address, tls=self._client_tls(), token=token, **options)
        self._clients.append(client)
        return client

    def close(self) -> None:
        """Close every client this server handed out."""
        for client in self._clients:
            client.close()

    def _client_tls(self) -> TLS | bool:
        if self.tls is None:
            return False
        from flux_client import TLS

        return TLS(root_certificates=self.tls.ca_file.read_bytes(), server_name=self.tls.server_name)


def demo_index() -> TestIndex:
    """A small fixed index (1,000 x 16, cosine, ids ``track:0000``...) that needs no data."""
    vectors = np.random.default_rng(7).standard_normal((DEMO_COUNT, DEMO_DIMENSION), dtype=np.float32)
    return TestIndex(vectors=vectors, ids=[f"track:{i:04d}" for i in range(DEMO_COUNT)])


@contextmanager
def serve(
    indexes: Mapping[str, TestIndex] | None = None,
    *,
    tokens: Mapping[str, str] | None = None,
    tls: ServerTLS | None = None,
    config: Mapping[str, Any] | None = None,
    ready_timeout: float = 30.0,
) -> Iterator[RunningFlux]:
    """Build ``indexes`` (default: the demo index) and serve them on 127.0.0.1 on a free port.

    ``tokens`` maps each bearer token to its role (reader, writer or admin); the yielded
    client uses the first one. ``config`` adds or replaces top-level sections of the server's
    config (``limits``, ``aliases``, ...). The server stops and its folder is removed on exit.
    """
    from flux import config as flux_config
    from flux.server import build_server
    from flux_core.backend import Metric
    from flux_core.storage import builder

    folder = Path(tempfile.mkdtemp(prefix="flux-test-"))
    with ExitStack() as stack:
        stack.callback(shutil.rmtree, folder, True)
        entries = []
        for name, index in (indexes if indexes is not None else {DEMO: demo_index()}).items():
            vectors = np.ascontiguousarray(index.vectors, dtype=np.float32)
            builder.build(
                folder / name,
                vectors,
                index.ids,
                backend=index.backend,
                metric=Metric(index.metric),
                name=name,
                params=index.params,
                attributes=index.attributes,
            )
            entries.append({"name": name, "path": str(folder / name)})
        raw: dict[str, Any] = {"server": {"host": "127.0.0.1", "port": 0, "grace_seconds": 0.5}, "indexes": entries}
        if tokens:
            raw["auth"] = {
                "tokens": [
                    {"name": f"token-{i}", "role": role, "sha256": hashlib.sha256(token.encode()).hexdigest()}
                    for i, (token, role) in enumerate(tokens.items())
                ]
            }
        if tls is not None:
            raw["tls"] = {"cert_file": str(tls.cert_file), "key_file": str(tls.key_file)}
        raw.update(config or {})
        server = build_server(flux_config.parse(raw, source="flux_server test config"))
        server.start()
        stack.callback(server.stop, 0)
        if not server.wait_ready(ready_timeout):
            raise TimeoutError(f"the Flux test server did not load its indexes within {ready_timeout}s")
        running = RunningFlux(address=server.address, token=next(iter(tokens or {}), None), tls=tls)
        stack.callback(running.close)
        yield running


@pytest.fixture
def flux_indexes() -> Mapping[str, TestIndex] | None:
    """The indexes ``flux_server`` serves; override it to serve your own (None: the demo index)."""
    return None


@pytest.fixture
def flux_server(flux_indexes: Mapping[str, TestIndex] | None) -> Iterator[RunningFlux]:
    """A real Flux server on 127.0.0.1 serving ``flux_indexes``, stopped after the test."""
    with serve(flux_indexes) as running:
        yield running
