"""``flux bench``: benchmarks that compare Flux with the in-process libraries in one run."""
