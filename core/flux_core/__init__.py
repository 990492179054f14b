"""Flux's build side: the backend interface and registry, the artifact format and the builder.

Numpy only, no gRPC and no generated code, so a pipeline worker (Beam on Dataflow, Flink or
Spark) can build artifacts that the server loads, without carrying the server.
"""
