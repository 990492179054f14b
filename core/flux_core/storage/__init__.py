"""Storage: the artifact format, the builder, the backend registry and what an index keeps (ids,
attributes), on disk and in memory. What a build worker needs, without gRPC."""
