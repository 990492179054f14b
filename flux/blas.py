"""How many threads numpy's BLAS (OpenBLAS, in numpy's wheels) may use in the server process.

OpenBLAS starts a thread per CPU it sees and splits every large matrix product over all of them.
A server already runs its calls on handler threads of its own, and often on fewer CPUs than the
machine shows (pinned, or held to a share by its container, where OpenBLAS still sees every CPU
of the node): the product's threads then wait on one another. Measured with the server pinned
to one CPU, the exact backend over 200,000 x 64 (one query per Search): 11.9 ms p50 and 11.0 ms
of server CPU per call with OpenBLAS's own two threads, 3.1 ms and 2.9 ms with one. ``flux serve``
therefore keeps one BLAS thread per product (``server.blas_threads``); ``flux build`` keeps the
library's default. faiss brings an OpenBLAS of its own that runs on OpenMP threads, which its
backends already bound per call (``Backend.search``'s ``threads``).
"""

from __future__ import annotations

import os

#: The environment variable OpenBLAS reads when it loads; set, it wins over ``server.blas_threads``.
ENVIRONMENT = "OPENBLAS_NUM_THREADS"


def limit_threads(count: int) -> bool:
    """Let each of numpy's BLAS products use at most ``count`` threads from now on (0: the library's
    default). Returns whether the limit was taken: not for 0, nor when the environment chose one."""
    if count <= 0 or ENVIRONMENT in os.environ:
        return False
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=count, user_api="blas")
    return True
