"""Errors raised by adaptive_offload.

Every error a user can cause (a bad bag, a bad image, a bad parameter) derives from
:class:`AdaptiveOffloadError`, so command-line front ends can report it in one line.
"""

from __future__ import annotations


class AdaptiveOffloadError(Exception):
    """Base class of all adaptive_offload errors."""


class ConversionError(AdaptiveOffloadError):
    """A message could not be converted to or from its Python form.

    Attributes:
        reason: Short machine-readable reason, used as the drop reason of a frame record.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f'{reason}: {detail}')
        self.reason = reason
        self.detail = detail


class ConfigError(AdaptiveOffloadError):
    """A parameter, parameter file or scenario is invalid."""


class BagError(AdaptiveOffloadError):
    """A rosbag cannot be read or holds nothing usable."""


class BackendError(AdaptiveOffloadError):
    """An inference backend failed to load or to run."""


class CloudError(AdaptiveOffloadError):
    """A cloud request failed.

    Attributes:
        reason: Short machine-readable reason (``timeout``, ``connection``, ``http_503``, ...).
        bytes_sent: Request bytes that left the robot before the failure (a request that timed
            out or was refused by the server was sent all the same; its radio energy counts).
        retry_after_s: For ``overloaded``: when the service expects to have room again.
    """

    def __init__(self, reason: str, detail: str = '', bytes_sent: int = 0,
                 retry_after_s: float = 0.0) -> None:
        super().__init__(f'{reason}: {detail}' if detail else reason)
        self.reason = reason
        self.detail = detail
        self.bytes_sent = bytes_sent
        self.retry_after_s = retry_after_s
