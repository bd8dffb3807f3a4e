"""Self-signed certificates for the test servers.

ejabberd and Prosody both insist on a certificate before they offer STARTTLS or direct TLS.
A self-signed one is enough: test clients disable verification, and server-to-server falls back
to dialback when SASL EXTERNAL cannot verify it. The certificate is its own CA, so a test that
does want to verify can load ``cert_path`` as the trust anchor.

The ``cryptography`` package is used when importable (no subprocess, fast); otherwise the
``openssl`` command line tool, which every Debian machine has.
"""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from pathlib import Path

try:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    HAVE_CRYPTOGRAPHY = True
except ImportError:  # pragma: no cover - depends on the machine
    HAVE_CRYPTOGRAPHY = False

VALID_DAYS = 3650


def make_cert(directory: Path, names: list[str]) -> tuple[Path, Path, Path]:
    """Create a self-signed EC P-256 certificate for ``names`` in ``directory``.

    The subject CN is ``names[0]``; the subjectAltName lists every name (IP literals become
    IP entries). Returns (cert_path, key_path, combined_path): the combined PEM holds the
    certificate followed by the key, which is what ejabberd's ``certfiles`` wants.
    """
    if not names:
        raise ValueError("make_cert needs at least one name")
    directory.mkdir(parents=True, exist_ok=True)
    stem = names[0].replace("*", "_")
    cert_path, key_path = directory / f"{stem}.crt", directory / f"{stem}.key"
    if HAVE_CRYPTOGRAPHY:
        cert_pem, key_pem = _with_cryptography(names)
        cert_path.write_bytes(cert_pem)
        key_path.write_bytes(key_pem)
    else:
        _with_openssl(names, cert_path, key_path)
    key_path.chmod(0o640)
    combined_path = directory / f"{stem}.pem"
    combined_path.write_bytes(cert_path.read_bytes() + key_path.read_bytes())
    combined_path.chmod(0o640)
    return cert_path, key_path, combined_path


def _san_entries(names: list[str]) -> list[x509.GeneralName]:
    entries: list[x509.GeneralName] = []
    for name in names:
        try:
            entries.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            entries.append(x509.DNSName(name))
    return entries


def _with_cryptography(names: list[str]) -> tuple[bytes, bytes]:
    """Build the certificate in-process; returns (cert PEM, unencrypted PKCS#8 key PEM)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_san_entries(names)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.PEM), key_pem


def _with_openssl(names: list[str], cert_path: Path, key_path: Path) -> None:
    """Same certificate through ``openssl req -x509`` (OpenSSL 1.1.1 or newer)."""
    san = ",".join(
        f"IP:{n}" if _is_ip(n) else f"DNS:{n}" for n in names
    )
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "ec",
            "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key_path), "-out", str(cert_path),
            "-days", str(VALID_DAYS), "-subj", f"/CN={names[0]}",
            "-addext", f"subjectAltName={san}",
            "-addext", "basicConstraints=critical,CA:TRUE",
        ],
        check=True,
        capture_output=True,
    )


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True
