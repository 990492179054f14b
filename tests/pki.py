"""Certificates for the TLS tests, made with `cryptography`: a CA, a second CA that signed nothing
of ours, a server certificate for flux.test and client certificates."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SERVER_NAME = "flux.test"


def _certificate(
    name: str, key: ec.EllipticCurvePrivateKey, issuer: tuple[str, ec.EllipticCurvePrivateKey] | None, usage: str
) -> bytes:
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer[0])]) if issuer else subject
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=usage == "ca", path_length=None), critical=True)
    )
    if usage == "server":
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName(SERVER_NAME)]), critical=False)
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    if usage == "client":
        builder = builder.add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
    signer = issuer[1] if issuer else key
    return builder.sign(signer, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make(root: Path) -> dict[str, Path]:
    """PEM files: ca, other-ca, server (flux.test, signed by ca), client (signed by ca), stranger (by other-ca)."""
    keys = {
        name: ec.generate_private_key(ec.SECP256R1()) for name in ("ca", "other-ca", "server", "client", "stranger")
    }
    certificates = {
        "ca": _certificate("ca", keys["ca"], None, "ca"),
        "other-ca": _certificate("other-ca", keys["other-ca"], None, "ca"),
        "server": _certificate("server", keys["server"], ("ca", keys["ca"]), "server"),
        "client": _certificate("client", keys["client"], ("ca", keys["ca"]), "client"),
        "stranger": _certificate("stranger", keys["stranger"], ("other-ca", keys["other-ca"]), "client"),
    }
    files = {}
    for name, pem in certificates.items():
        (root / f"{name}.pem").write_bytes(pem)
        (root / f"{name}.key").write_bytes(_key_pem(keys[name]))
        files[name] = root / f"{name}.pem"
        files[f"{name}.key"] = root / f"{name}.key"
    return files
