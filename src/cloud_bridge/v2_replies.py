"""What a V2 service answers: detections with their timings, or a refusal that says why."""

from __future__ import annotations

import http.client
import json

from adaptive_offload.errors import CloudError
from cloud_bridge.request_budget import overloaded
import numpy as np


def refusal(response: http.client.HTTPResponse, payload: bytes, sent: int) -> CloudError:
    """Return the error of a non-200 answer: ``overloaded`` for a load refusal, else http_N.

    Args:
        response: The answer (its status and headers).
        payload: Its body.
        sent: Request bytes sent (charged to the error).
    """
    text = payload[:300].decode(errors='replace')
    if response.status == 503 and 'overloaded' in text:
        try:
            retry_us = json.loads(payload)['parameters']['retry_after_us']
            retry_s: float | None = float(retry_us) / 1e6
        except (ValueError, KeyError, TypeError):  # MLServer's answer: the header, the text
            header = response.getheader('Retry-After') or ''
            retry_s = float(header) if header.isdigit() else None
        return overloaded(text, sent, retry_s)
    return CloudError(f'http_{response.status}', text[:200], sent)


def parse_v2_reply(payload: bytes) -> tuple[np.ndarray, np.ndarray, tuple[str, ...],
                                            float | None, float | None]:
    """Read boxes, scores, labels, and the optional server time and queue wait (ms).

    Raises:
        CloudError: ``bad_reply`` if the payload is not such a response or is inconsistent.
    """
    try:
        body = json.loads(payload)
        outputs = {o['name']: o for o in body['outputs']}
        parameters = body.get('parameters') or {}
        server_us, queue_us = parameters.get('server_us'), parameters.get('queue_us')
        server_ms = None if server_us is None else float(server_us) / 1e3
        queue_ms = None if queue_us is None else float(queue_us) / 1e3
        boxes = np.asarray(outputs['boxes']['data'], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(outputs['scores']['data'], dtype=np.float64).reshape(-1)
        labels = tuple(str(v) for v in outputs['labels']['data'])
    except (ValueError, KeyError, TypeError) as err:
        raise CloudError('bad_reply', f'not a V2 detection response: {err}') from err
    return (*consistent(boxes, scores, labels), server_ms, queue_ms)


def consistent(boxes: np.ndarray, scores: np.ndarray,
               labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Return the detections if they agree in length and are finite.

    Raises:
        CloudError: ``bad_reply`` otherwise.
    """
    if not len(boxes) == len(scores) == len(labels) or not np.isfinite(boxes).all() or \
            not np.isfinite(scores).all():
        raise CloudError('bad_reply', 'boxes, scores and labels disagree or are not finite')
    return boxes, scores, labels
