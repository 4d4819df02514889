"""The V2 REST client against servers that misbehave or refuse early."""

from __future__ import annotations

import socket
import threading
from typing import Iterator

from adaptive_offload.errors import CloudError
from cloud_bridge.transport import V2RestTransport
import pytest


def _refuse_on_headers(listener: socket.socket) -> None:
    """Answer one request 413 once its headers are in, and close with the body unread."""
    conn, _ = listener.accept()
    with conn:
        conn.settimeout(10.0)
        head = b''
        while b'\r\n\r\n' not in head:
            chunk = conn.recv(4096)
            if not chunk:
                return
            head += chunk
        body = b'{"error": "body of 11184876 bytes is over the limit of 1000000"}'
        conn.sendall(b'HTTP/1.1 413 Payload Too Large\r\nContent-Type: application/json\r\n'
                     b'Content-Length: %d\r\nConnection: close\r\n\r\n%s' % (len(body), body))
    # Closing with unread bytes in the receive buffer makes the kernel send a reset.


@pytest.fixture
def refusing_server() -> Iterator[str]:
    listener = socket.socket()
    listener.bind(('127.0.0.1', 0))
    listener.listen(1)
    thread = threading.Thread(target=_refuse_on_headers, args=(listener,), daemon=True)
    thread.start()
    try:
        yield f'http://127.0.0.1:{listener.getsockname()[1]}'
    finally:
        listener.close()
        thread.join(timeout=10.0)


def test_a_refusal_sent_before_the_body_was_read_is_reported_not_a_broken_pipe(
        refusing_server: str) -> None:
    image = bytes(8 * 1024 * 1024)  # more than loopback's socket buffers hold
    transport = V2RestTransport(refusing_server, 'rcnn')
    try:
        with pytest.raises(CloudError, match='over the limit') as caught:
            transport.infer(image, 10.0)
    finally:
        transport.close()
    assert caught.value.reason == 'http_413'
