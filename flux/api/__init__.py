"""The gRPC layer: thin servicers that decode, call the core and encode."""
