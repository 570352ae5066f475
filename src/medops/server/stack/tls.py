"""The stack's TLS certificate: the user's own, or one issued by a CA made for the stack.

A generated stack gets a small private CA (``tls/ca.crt``, key in ``secrets/ca.key``) and a
server certificate for the domain signed by it (``tls/server.crt``, key in
``secrets/server.key``). Clients trust ``tls/ca.crt`` (``MLFLOW_TRACKING_SERVER_CERT_PATH``,
``server.ca_file``, the browser's store); a server certificate re-issued later (a new domain, an
expired one) is signed by the same CA, so they keep trusting it. Keys are ECDSA P-256 and
owner-only files. A certificate of the user's (``--cert``/``--key``) is checked and copied in.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medops.errors import ConfigError, DependencyMissingError
from medops.server.stack.envfile import write_private

if TYPE_CHECKING:
    from cryptography import x509

CA_DAYS = 3650
#: what browsers accept for a server certificate, whoever signed it
SERVER_DAYS = 397


@dataclass(frozen=True)
class TlsFiles:
    cert: Path  # the server certificate (PEM), public
    key: Path  # its private key (PEM), owner-only
    ca: Path | None  # the CA that signed it, when the stack made it


@dataclass(frozen=True)
class TlsResult:
    files: TlsFiles
    written: tuple[Path, ...]
    kept: tuple[Path, ...]


def tls_files(root: Path) -> TlsFiles:
    return TlsFiles(root / "tls" / "server.crt", root / "secrets" / "server.key",
                    root / "tls" / "ca.crt")


def ensure_tls(root: Path, domain: str, cert: Path | None = None,
               key: Path | None = None) -> TlsResult:
    """The server certificate for ``domain`` under ``root``: ``cert``/``key`` copied in when
    given; else the existing one if it covers ``domain`` and is not about to expire; else one
    issued now by the stack's CA (made on first use)."""
    files = tls_files(root)
    if (cert is None) != (key is None):
        raise ConfigError("give both --cert and --key (the certificate and its private key), "
                          "or neither to have the stack issue one")
    if cert is not None and key is not None:
        _copy_own(cert, key, files)
        return TlsResult(TlsFiles(files.cert, files.key, None), (files.cert, files.key), ())
    if files.cert.exists() and files.key.exists() and _serves(files.cert, domain):
        return TlsResult(files, (), (files.cert, files.key))
    return _issue(root, domain, files)


def _crypto() -> Any:
    try:
        import cryptography  # noqa: F401
    except ImportError as exc:
        raise DependencyMissingError("cryptography", "server",
                                     "issuing the stack's TLS certificate") from exc


def _copy_own(cert: Path, key: Path, files: TlsFiles) -> None:
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        cert_pem, key_pem = cert.read_bytes(), key.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the TLS files: {exc}") from exc
    try:
        leaf = x509.load_pem_x509_certificates(cert_pem)[0]
    except ValueError as exc:
        raise ConfigError(f"--cert {cert} is not a PEM certificate: {exc}") from exc
    try:
        private = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"--key {key} is not an unencrypted PEM private key (nginx reads it "
                          f"at start, unattended): {exc}") from exc
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    if (private.public_key().public_bytes(serialization.Encoding.PEM, spki)
            != leaf.public_key().public_bytes(serialization.Encoding.PEM, spki)):
        raise ConfigError(f"--key {key} is not the private key of --cert {cert}")
    files.cert.parent.mkdir(parents=True, exist_ok=True)
    _private_dir(files.key.parent)
    files.cert.write_bytes(cert_pem)  # the whole chain, as nginx sends it
    write_private(files.key, key_pem.decode())


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o700)


def _serves(cert_path: Path, domain: str) -> bool:
    """Whether the certificate names ``domain`` and is valid for 30 more days."""
    _crypto()
    from cryptography import x509

    cert = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
    if cert.not_valid_after_utc < datetime.now(timezone.utc) + timedelta(days=30):
        return False
    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    ip = _ip(domain)
    if ip is not None:
        return ip in names.get_values_for_type(x509.IPAddress)
    return domain in names.get_values_for_type(x509.DNSName)


def _ip(domain: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(domain)
    except ValueError:
        return None


def _issue(root: Path, domain: str, files: TlsFiles) -> TlsResult:
    _crypto()
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    assert files.ca is not None
    ca_key_path = root / "secrets" / "ca.key"
    _private_dir(ca_key_path.parent)
    files.ca.parent.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    now = datetime.now(timezone.utc)
    if ca_key_path.exists() and files.ca.exists():
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
    else:
        ca_key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "medops stack"),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"medops stack CA ({domain})")])
        ca_cert = (_builder(name, name, ca_key.public_key(), now, CA_DAYS)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
                   .add_extension(_usage(cert_sign=True), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()),
                                  critical=False)
                   .sign(ca_key, hashes.SHA256()))
        write_private(ca_key_path, _pem_key(ca_key))
        files.ca.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        written += [files.ca, ca_key_path]
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{ca_key_path} is not the stack's EC CA key; remove {files.ca} and "
                          f"{ca_key_path} to make a new CA (clients must then trust the new one)")
    key = ec.generate_private_key(ec.SECP256R1())
    ip = _ip(domain)
    alt: x509.GeneralName = x509.IPAddress(ip) if ip is not None else x509.DNSName(domain)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, domain)])
    cert = (_builder(subject, ca_cert.subject, key.public_key(), now, SERVER_DAYS)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([alt]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    write_private(files.key, _pem_key(key))
    files.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    written += [files.cert, files.key]
    return TlsResult(files, tuple(written), ())


def _builder(subject: x509.Name, issuer: x509.Name, public_key: Any, now: datetime,
             days: int) -> x509.CertificateBuilder:
    from cryptography import x509

    return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
            .public_key(public_key).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=days)))


def _usage(cert_sign: bool) -> x509.KeyUsage:
    from cryptography import x509

    return x509.KeyUsage(digital_signature=True, content_commitment=False,
                         key_encipherment=False, data_encipherment=False, key_agreement=False,
                         key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False,
                         decipher_only=False)


def _pem_key(key: Any) -> str:
    from cryptography.hazmat.primitives import serialization

    return str(key.private_bytes(serialization.Encoding.PEM,
                                 serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption()).decode())
