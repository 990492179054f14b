"""Flux's core: backends, artifacts, served indexes. Knows nothing of gRPC or the CLI."""
