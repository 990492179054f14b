"""TLS and mutual TLS for the gRPC port, from PEM files named in the config's ``tls`` section."""

from __future__ import annotations

from pathlib import Path

import grpc

from flux.config import TLSConfig
from flux_core.errors import ConfigError


def read_pem(path: Path, key: str, marker: str = "-----BEGIN ") -> bytes:
    """The PEM file at ``path``; a ConfigError naming ``key`` and the file when it is missing or not PEM."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{key}: {path}: no such file") from None
    except OSError as exc:
        raise ConfigError(f"{key}: {path}: unreadable: {exc.strerror}") from None
    if marker.encode() not in data:
        raise ConfigError(f"{key}: {path}: not a PEM file (no '{marker}' line)")
    return data


def server_credentials(tls: TLSConfig) -> grpc.ServerCredentials:
    """The server's certificate and key; with ``client_ca_file``, clients must present a certificate it signed."""
    chain = read_pem(tls.cert_file, "tls.cert_file", "-----BEGIN CERTIFICATE")
    key = read_pem(tls.key_file, "tls.key_file", "PRIVATE KEY")
    if tls.client_ca_file is None:
        return grpc.ssl_server_credentials([(key, chain)])
    ca = read_pem(tls.client_ca_file, "tls.client_ca_file", "-----BEGIN CERTIFICATE")
    return grpc.ssl_server_credentials([(key, chain)], root_certificates=ca, require_client_auth=True)
