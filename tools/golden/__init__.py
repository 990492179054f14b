"""Golden examples of the wire contract: record them from a real server, replay them against one.

    python -m tools.golden record                 # `make golden`: answer every case, rewrite protos/examples/*.json
    python -m tools.golden replay                 # replay protos/examples/ against a fresh server, report differences
    python -m tools.golden replay --target HOST:PORT --examples DIR
    python -m tools.golden serve                  # serve the fixture, print its address, stop on end of input

protos/examples/README.md describes the files. The cases themselves are written in ``cases`` (``CASES``):
the requests, in order, that a fresh server of ``protos/examples/fixture.json`` answers. Record
after an intended change of an answer and review the diff of protos/examples/ like code; a diff
you did not mean is a break of the contract that Python, Java and Go clients would all see.

The replayer (``replay``) reads a file's requests and expected answers into the generated types of the
Python client (``flux_api``), calls the server, clears the fields a case ignores on both sides and compares
the messages; an error is compared by code, ErrorInfo reason and metadata, and the fields of its
BadRequest violations, never by its message. clients/java/golden and clients/go/golden do the same.

The modules: ``fixture`` (the indexes and the server that serves them), ``calls`` (calling any method
by name, reading errors, clearing ignored fields), ``cases``, ``record`` and ``replay``.
"""

from .cases import decode_vectors
from .fixture import example_files, load_fixture, serve
from .record import dumps, record
from .replay import replay

__all__ = ["decode_vectors", "dumps", "example_files", "load_fixture", "record", "replay", "serve"]
