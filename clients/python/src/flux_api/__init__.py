"""Generated from protos/ by tools/protogen.py; do not edit."""

#: The release of the wire contract this code was generated from (protos/CHANGELOG.md).
CONTRACT_VERSION = "1.2.0"
