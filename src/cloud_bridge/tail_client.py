"""The bridge's client of the service's tail model: a split detector's head payload to the cloud.

A robot that ran the head of the service's R-CNN (``rcnn_service.rcnn_split.RcnnSplit.head``,
or anything that returns the same payload) sends what crosses the split to ``<model>-tail``
and gets the detections back in the form an image gets them (:class:`CloudReply`, boxes in the
original image's pixels). The request is the V2 binary tensor data extension of
:mod:`adaptive_offload.split_wire`; connections, token, robot id, budget and errors are those
of :class:`cloud_bridge.transport.V2RestTransport`, so the bridge reads a refused or failed
tail request as it reads an image request.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

from adaptive_offload.errors import CloudError, ConfigError
from adaptive_offload.inference_transport import CloudReply
from adaptive_offload.split_wire import (encode_split, HEADER_LENGTH, request_body,
                                         split_from_encoded, SplitPayload, SplitTensors,
                                         tail_model_name)
from adaptive_offload.tensor_codec import ENCODINGS
from adaptive_offload.tensor_compression import COMPRESSORS
from cloud_bridge.transport import V2RestTransport


class EncodedSplit(Protocol):
    """A payload already encoded with ``adaptive_offload.tensor_codec`` (``EncodedPayload``)."""

    @property
    def meta(self) -> Mapping[str, Any]:
        """``point``, ``padded_size``, ``image_sizes``, ``original_sizes``."""

    @property
    def blobs(self) -> Mapping[str, bytes]:
        """The tensors as ``tensor_codec.encode_tensor`` bytes, by name."""


class V2TailTransport:
    """Sends head payloads to the service's tail model over V2 REST. Thread-safe.

    Args:
        url: Service base URL, ``http://host:port`` or ``https://host:port``.
        model: The image model's name on the service (the tail is ``<model>-tail``).
        token: Bearer token; empty sends none.
        ca_file: PEM CA file that verifies an https service; empty trusts the system's CAs.
        robot_id: Id sent with every request (the service's fair turns); empty: none.
        encoding: How payloads given as tensors are encoded: ``fp32`` (lossless), ``fp16`` or
            ``int8``.
        compression: How they are compressed: ``zstd``, ``lz4`` or ``none``.

    Raises:
        ConfigError: For a URL that is not http(s), a bad CA file, or an unknown encoding or
            compression.
    """

    def __init__(self, url: str, model: str, token: str = '', ca_file: str = '',
                 robot_id: str = '', encoding: str = 'fp16', compression: str = 'zstd') -> None:
        if encoding not in ENCODINGS or compression not in COMPRESSORS:
            raise ConfigError(f'unknown encoding/compression {encoding!r}/{compression!r} '
                              f'(encodings: {", ".join(ENCODINGS)}; compressions: '
                              f'{", ".join(COMPRESSORS)})')
        self.model = tail_model_name(model)
        self.encoding = encoding
        self.compression = compression
        self._rest = V2RestTransport(url, self.model, token, ca_file, robot_id)

    def infer(self, payload: SplitPayload | SplitTensors | EncodedSplit, timeout_s: float,
              parameters: Mapping[str, Any] | None = None) -> CloudReply:
        """Send one head payload (one image) and return its detections.

        Args:
            payload: The head's payload (its tensors are encoded with this transport's
                encoding and compression), or one encoded already (``split_wire.SplitTensors``,
                or ``tensor_codec`` blobs with their metadata, sent as they are).
            timeout_s: Time left for the request.
            parameters: More request parameters, over the robot id and budget (another
                robot's id, when a middle device forwards; ``split_wire.FORWARD_TO``).

        Returns:
            The detections, in the original image's pixels, as for an image.

        Raises:
            CloudError: With reason ``timeout``, ``connection``, ``tls``, ``overloaded``,
                ``http_<code>`` (400 names what the service refused) or ``bad_reply``.
            ConversionError: If the payload cannot be encoded (e.g. beyond fp16's range).
        """
        if timeout_s <= 0:
            raise CloudError('timeout', 'no time left before the deadline')
        split = self.wire(payload)
        body, header_length = request_body(
            split, {**self._rest.request_parameters(timeout_s), **(parameters or {})})
        return self._rest.post(body, timeout_s, {'Content-Type': 'application/octet-stream',
                                                 HEADER_LENGTH: str(header_length)})

    def wire(self, payload: SplitPayload | SplitTensors | EncodedSplit) -> SplitTensors:
        """Return ``payload`` encoded as it is sent; see :meth:`infer`.

        Raises:
            ConversionError: If it cannot be encoded.
        """
        if isinstance(payload, SplitTensors):
            return payload
        blobs = getattr(payload, 'blobs', None)
        if blobs is not None:
            return split_from_encoded(getattr(payload, 'meta'), blobs)
        return encode_split(payload, self.encoding, self.compression)  # type: ignore[arg-type]

    def metadata(self, timeout_s: float) -> dict[str, Any]:
        """Return the tail model's V2 metadata; its ``split`` names the weights and points.

        Raises:
            CloudError: As :meth:`cloud_bridge.transport.V2RestTransport.metadata`.
        """
        return self._rest.metadata(timeout_s)

    def close(self) -> None:
        """Release connections."""
        self._rest.close()
