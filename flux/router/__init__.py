"""The router role: one logical index served over shard servers through the same VectorService contract.

``router:`` in the config (``flux.router.config``) turns ``flux serve`` into a router: it holds no
index, fans each search out to the shard groups of the logical index it names (``flux.router.fanout``),
merges their answers exactly (``flux.router.merge``) and answers as one Flux server would, so clients
do not change. See docs/scale.md, "Serving a sharded index".
"""
