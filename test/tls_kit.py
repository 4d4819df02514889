"""Certificates made at test time: a CA, a server certificate it signs, and a stranger CA."""

from __future__ import annotations

from dataclasses import dataclass
import datetime
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of the PEM files.

    Attributes:
        ca: The CA that signed ``cert``.
        cert: Server certificate for 127.0.0.1 and localhost.
        key: Its private key.
        other_ca: A CA that signed nothing here.
        other_key: A key that is not ``cert``'s.
    """

    ca: str
    cert: str
    key: str
    other_ca: str
    other_key: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _ca(common: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common)).issuer_name(_name(common))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def make_pki(folder: Path) -> Pki:
    """Write a CA, a loopback server certificate signed by it, and strangers to ``folder``."""
    ca_key, ca_cert = _ca('adaptive-offload test CA')
    other_key, other_cert = _ca('a stranger CA')
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name('localhost')).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName('localhost'), x509.IPAddress(ipaddress.ip_address('127.0.0.1'))]),
                critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files = {'ca': ca_cert.public_bytes(serialization.Encoding.PEM),
             'cert': cert.public_bytes(serialization.Encoding.PEM),
             'key': _pem_key(key),
             'other_ca': other_cert.public_bytes(serialization.Encoding.PEM),
             'other_key': _pem_key(other_key)}
    for name, data in files.items():
        (folder / f'{name}.pem').write_bytes(data)
    return Pki(**{name: str(folder / f'{name}.pem') for name in files})
