"""What both runtimes check before doing any work: tokens, routes, framing, image headers.

Nothing here reads a request body or decodes an image: every check runs on headers, or on the
first bytes of an image, so a refused request costs microseconds and no memory whatever it
claims to hold. Both runtimes (``rcnn_service.service`` and the MLServer guard) use the same
rules, so a client sees the same status from either.

Access (the documented choice): liveness and readiness (server and model) are open, for
probes; the model repository API (load, unload, index) is disabled, since the service serves
the one model it loaded at start; everything else (inference, server and model metadata, docs)
needs a token when tokens are configured. Prometheus metrics stay open: they hold counters
only, and MLServer serves them on their own port, which stays inside the cluster.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import logging
import math
import os
from pathlib import Path
import re
import threading
import time
from typing import Callable, Iterable, Sequence

from adaptive_offload.errors import AdaptiveOffloadError, ConfigError, ConversionError
from adaptive_offload.image_header import image_size as header_size

TOKENS_ENV = 'ADAPTIVE_OFFLOAD_TOKENS'
"""Environment variable with tokens separated by commas or white space (a Kubernetes Secret)."""

_TOKEN = re.compile(r'^[\x21-\x7e]+$')  # visible ASCII: what a header carries unchanged
_DIGITS = re.compile(r'^[0-9]{1,18}$')
_MODEL_READY = re.compile(r'^/v2/models/[^/]+(?:/versions/[^/]+)?/ready$')
_OPEN_PATHS = frozenset({'/v2/health/live', '/v2/health/ready', '/metrics'})
_OPEN_GRPC = frozenset({'ServerLive', 'ServerReady', 'ModelReady'})


class RequestError(AdaptiveOffloadError):
    """A request the service refuses, with its HTTP status (the gRPC code follows from it)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Overloaded(RequestError):
    """A request refused because the service cannot answer it in time: 503, with Retry-After.

    Attributes:
        reason: ``budget`` (would finish after its budget), ``queue_full``, ``evicted`` (made
            room for a robot holding less of the queue) or ``expired`` (its budget ran out
            while it waited).
        robot: Id of the robot that sent it.
        retry_after_s: When the queue is expected to have drained.
    """

    def __init__(self, reason: str, robot: str, retry_after_s: float, detail: str) -> None:
        super().__init__(503, f'overloaded ({reason}): {detail}; retry after '
                              f'{retry_after_s * 1e3:.0f} ms')
        self.reason = reason
        self.robot = robot
        self.retry_after_s = retry_after_s

    @property
    def retry_after_header(self) -> str:
        """The Retry-After value: whole seconds, at least 1 (HTTP has no finer unit)."""
        return str(max(1, math.ceil(self.retry_after_s)))


class ModelUnavailable(Overloaded):
    """The model's process died under a batch, or is restarting: 503 with Retry-After.

    An :class:`Overloaded` so that it is answered as a load refusal is (Retry-After, and a
    client backs off), but its own message, and UNAVAILABLE over gRPC.
    """

    def __init__(self, detail: str, retry_after_s: float, robot: str = '') -> None:
        RequestError.__init__(self, 503, f'model unavailable: {detail}; retry after '
                                         f'{retry_after_s * 1e3:.0f} ms')
        self.reason = 'model_restarting'
        self.robot = robot
        self.retry_after_s = retry_after_s


class Access(enum.Enum):
    """Who may use an endpoint."""

    OPEN = 'open'          # health probes
    TOKEN = 'token'        # needs a configured token, if any is configured
    DISABLED = 'disabled'  # the model repository API: refused even with a token


DISABLED_MESSAGE = ('the model repository API is disabled: the service serves the model it '
                    'loaded at start; restart it to change the model')


def rest_access(method: str, path: str) -> Access:
    """Return who may call ``method path`` (the query string already cut off)."""
    if path.startswith('/v2/repository/') or path == '/v2/repository':
        return Access.DISABLED
    if method in ('GET', 'HEAD') and (path in _OPEN_PATHS or _MODEL_READY.match(path)):
        return Access.OPEN
    return Access.TOKEN


def grpc_access(method: str) -> Access:
    """Return who may call a gRPC method, given as ``/package.Service/Method``."""
    service, _, name = method.rpartition('/')
    if 'Repository' in service or name.startswith('Repository'):
        return Access.DISABLED
    return Access.OPEN if name in _OPEN_GRPC else Access.TOKEN


class Tokens:
    """The bearer tokens clients may present (one per robot), compared in constant time.

    Each candidate is compared with every token, by SHA-256 digest, so neither the position of
    a match nor the length of a token shows in the time a check takes.

    Args:
        tokens: Accepted tokens; none accepts every request.

    Raises:
        ConfigError: For a token that is not visible ASCII (it could not arrive unchanged).
    """

    def __init__(self, tokens: Iterable[str] = ()) -> None:
        self.tokens = tuple(dict.fromkeys(tokens))
        bad = [i for i, t in enumerate(self.tokens) if not _TOKEN.match(t)]
        if bad:
            raise ConfigError(f'token {bad[0] + 1} holds white space or non-ASCII characters')
        self._digests = [hashlib.sha256(t.encode()).digest() for t in self.tokens]

    @property
    def required(self) -> bool:
        """Whether requests must carry a token."""
        return bool(self._digests)

    def accept(self, authorization: str | None) -> bool:
        """Whether an ``Authorization`` value (``Bearer <token>``) holds an accepted token."""
        if not self._digests:
            return True
        scheme, _, given = (authorization or '').strip().partition(' ')
        digest = hashlib.sha256(given.strip().encode('utf-8', 'replace')).digest()
        matches = [hmac.compare_digest(digest, d) for d in self._digests]  # all, no shortcut
        return scheme.lower() == 'bearer' and any(matches)


def load_tokens(token_file: str | os.PathLike[str] | None = None,
                environ: dict[str, str] | None = None) -> tuple[str, ...]:
    """Read tokens from a file (one a line, ``#`` comments) and from :data:`TOKENS_ENV`.

    Args:
        token_file: File of tokens (a mounted Kubernetes Secret); None or empty: none.
        environ: The environment (``os.environ`` by default).

    Returns:
        Every token from both sources, in order, without duplicates.

    Raises:
        ConfigError: If the file cannot be read or holds no token, or a token is not visible
            ASCII.
    """
    environ = dict(os.environ) if environ is None else environ
    tokens = environ.get(TOKENS_ENV, '').replace(',', ' ').split()
    if token_file:
        try:
            lines = Path(token_file).read_text(encoding='utf-8').splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f'cannot read token file {token_file}: {err}') from err
        from_file = [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith('#')]
        if not from_file:
            raise ConfigError(f'token file {token_file} holds no token')
        tokens += from_file
    return Tokens(tokens).tokens


def body_length(transfer_encoding: Sequence[str], content_length: Sequence[str]) -> int:
    """Check a request's framing headers and return the length of its body.

    Args:
        transfer_encoding: Every ``Transfer-Encoding`` header value.
        content_length: Every ``Content-Length`` header value.

    Raises:
        RequestError: 400 for Transfer-Encoding together with Content-Length (a smuggling
            attempt: a front end and this server could frame the body differently) or for a
            length that is not one decimal number; 411 for Transfer-Encoding alone (chunked
            bodies are not taken).
    """
    if transfer_encoding:
        if content_length:
            raise RequestError(400, 'Transfer-Encoding together with Content-Length')
        raise RequestError(411, 'Transfer-Encoding is not supported: send Content-Length')
    values = {v.strip() for v in content_length}
    if not values:
        return 0
    if len(values) > 1 or not _DIGITS.match(next(iter(values))):
        raise RequestError(400, f'bad Content-Length {", ".join(content_length)!r}')
    return int(values.pop())


def check_body(length: int, content_encoding: Sequence[str], limit: int) -> None:
    """Refuse a body before reading it: too long, or compressed.

    Raises:
        RequestError: 415 for a compressed body (it is never expanded: 1 MB of gzip can hold
            1 GB), 413 for a body over ``limit`` bytes.
    """
    codings = [c.strip().lower() for v in content_encoding for c in v.split(',')]
    if any(c not in ('', 'identity') for c in codings):
        raise RequestError(415, f'Content-Encoding {", ".join(content_encoding)} is not '
                                'supported: send the body uncompressed')
    if length > limit:
        raise RequestError(413, f'request of {length} bytes exceeds {limit}')


def image_size(data: bytes) -> tuple[int, int]:
    """Return ``(width, height)`` from a PNG or JPEG header, without decoding anything.

    Raises:
        RequestError: 400 if the bytes are neither, or their header is cut short or invalid.
    """
    try:
        return header_size(data)
    except ConversionError as err:
        raise RequestError(400, err.detail) from err


def check_image_header(data: bytes, max_side: int) -> tuple[int, int]:
    """Return the image's size, refusing one with a side over ``max_side`` before decoding.

    Raises:
        RequestError: 400 for no JPEG or PNG, or an image larger than ``max_side``.
    """
    width, height = image_size(data)
    if max(width, height) > max_side:
        raise RequestError(400, f'image {width}x{height} exceeds {max_side} px')
    return width, height


class RejectionLog:
    """One log line per refused request, at most ``burst`` lines per ``window_s``.

    Lines over the budget are counted, and the next line logged says how many were left out,
    so a flood of bad requests cannot flood the log (or the disk under it).

    Args:
        logger: Where the lines go (level WARNING).
        burst: Lines per window.
        window_s: Window length.
        clock: Monotonic seconds.
    """

    def __init__(self, logger: logging.Logger, burst: int = 20, window_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._logger = logger
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._start = -float('inf')
        self._logged = 0
        self.suppressed = 0

    def __call__(self, status: int | str, peer: str, reason: object) -> None:
        """Log one refusal (or count it, over the budget)."""
        with self._lock:
            now = self._clock()
            if now - self._start >= self._window_s:
                self._start, self._logged = now, 0
            if self._logged >= self._burst:
                self.suppressed += 1
                return
            self._logged += 1
            left_out, self.suppressed = self.suppressed, 0
        note = f' ({left_out} more refused, not logged)' if left_out else ''
        self._logger.warning('rejected %s from %s: %s%s', status, peer or '?', reason, note)
