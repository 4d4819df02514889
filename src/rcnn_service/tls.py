"""TLS for the service's REST and gRPC endpoints: a certificate and key from files.

The files are a mounted Kubernetes Secret (``kubernetes.io/tls``: ``tls.crt``, ``tls.key``) or
any PEM pair. Both are checked when the service starts, so a wrong path, a key that is not the
certificate's, or an encrypted key stops it with one clear line instead of at the first client.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
import ssl
from typing import Callable

from adaptive_offload.errors import ConfigError


@dataclass(frozen=True)
class TlsFiles:
    """A PEM certificate (chain) and its private key.

    Attributes:
        cert: Certificate file, the server's first, then any intermediates.
        key: Private key file (unencrypted: nobody is there to type a passphrase).
    """

    cert: str
    key: str

    @classmethod
    def from_options(cls, cert: str, key: str) -> TlsFiles | None:
        """Return the pair, None when neither is set.

        Raises:
            ConfigError: If only one of them is set.
        """
        if bool(cert) != bool(key):
            raise ConfigError('TLS needs both a certificate and its key (--tls-cert and '
                              '--tls-key), or neither')
        return cls(cert, key) if cert else None

    def server_context(self) -> ssl.SSLContext:
        """Return a server context with this pair (TLS 1.2 at least).

        Raises:
            ConfigError: If a file is missing or the pair does not load.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        for path in (self.cert, self.key):
            if not Path(path).is_file():
                raise ConfigError(f'TLS file {path!r} not found')
        try:
            # An encrypted key would prompt on the terminal; a service has none.
            context.load_cert_chain(self.cert, self.key, password=_no_passphrase)
        except (ssl.SSLError, ValueError, TypeError) as err:
            raise ConfigError(f'TLS certificate {self.cert!r} and key {self.key!r} do not '
                              f'load: {err}') from err
        return context

    def pem(self) -> tuple[bytes, bytes]:
        """Return (key, certificate chain) as bytes, checked, for gRPC's server credentials.

        Raises:
            ConfigError: As :meth:`server_context`.
        """
        self.server_context()
        return Path(self.key).read_bytes(), Path(self.cert).read_bytes()


_HINTS = {
    'HTTP_REQUEST': 'plain HTTP on the TLS port (use https:// or grpcs://)',
    'WRONG_VERSION_NUMBER': 'not TLS, or a TLS version this service does not speak',
    'UNSUPPORTED_PROTOCOL': 'the client offers only TLS versions below 1.2',
    'TLSV1_ALERT_UNKNOWN_CA': "the client does not trust this certificate's CA: check its CA file",
    'SSLV3_ALERT_BAD_CERTIFICATE': 'the client refused this certificate: check its name and CA',
    'SSLV3_ALERT_CERTIFICATE_UNKNOWN': 'the client refused this certificate: check its name, CA',
    'NO_SHARED_CIPHER': 'no cipher both sides accept',
}


def report_failed_handshakes(context: ssl.SSLContext, report: Callable[[str], None]) -> None:
    """Call ``report`` with a one-line reason for every TLS handshake that fails on ``context``.

    asyncio drops a failed handshake silently (it logs only in debug mode), so an operator
    never learned that a robot speaks plain HTTP to the TLS port or lacks the CA. A handshake
    that never completes is cut by the server's deadline instead, and is not reported.

    Args:
        context: A server context (the service's, or the one uvicorn made from the files).
        report: Called with the reason, e.g. ``TLS handshake failed: HTTP_REQUEST (plain
            HTTP on the TLS port ...)``.
    """
    class _Reported(ssl.SSLObject):
        def do_handshake(self) -> None:
            try:
                super().do_handshake()
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                raise  # more bytes to come: not a failure
            except ssl.SSLError as err:
                code = err.reason or type(err).__name__
                hint = _HINTS.get(code)
                report(f'TLS handshake failed: {code}' + (f' ({hint})' if hint else ''))
                raise

    context.sslobject_class = _Reported


def _no_passphrase() -> str:
    raise ValueError('the key is encrypted; give the service an unencrypted key')
