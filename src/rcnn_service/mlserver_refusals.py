"""How MLServer answers a request the queue refused for load (:class:`Overloaded`).

MLServer turns a model's exception into its own answer, a 503 without headers over REST and
UNAVAILABLE over gRPC, before anything outside it sees the exception. So a refusal leaves itself
in a per-call list (:data:`REFUSED`) that the REST middleware reads to add ``Retry-After`` and
the gRPC interceptor reads, through :class:`AbortAsOverloaded`, to answer RESOURCE_EXHAUSTED.
"""

from __future__ import annotations

import contextvars
from typing import Any

import grpc
from mlserver.errors import MLServerError
from rcnn_service.guard import ModelUnavailable, Overloaded


class Refused(MLServerError):
    """A refusal already counted and logged (the log filter leaves it out)."""


class OverloadedRefusal(Refused):
    """A request the queue refused for lack of time or room (:class:`Overloaded`).

    gRPC answers RESOURCE_EXHAUSTED (UNAVAILABLE for :class:`ModelUnavailable`) with a
    ``retry-after-ms`` trailer; REST answers 503 with ``Retry-After``
    (``mlserver_guard.DropAbandoned`` adds the header).
    """

    def __init__(self, err: Overloaded) -> None:
        super().__init__(str(err), status_code=503)
        self.overloaded = err
        holder = REFUSED.get()
        if holder is not None:
            holder.append(self)


REFUSED: contextvars.ContextVar[list[OverloadedRefusal] | None] = contextvars.ContextVar(
    'load_refusals', default=None)
"""Each call's list, set by the middleware or the interceptor before the model runs."""


class AbortAsOverloaded:
    """A gRPC call's context whose ``abort`` gives a load refusal RESOURCE_EXHAUSTED."""

    def __init__(self, context: Any, refused: list[OverloadedRefusal]) -> None:
        self._context = context
        self._refused = refused

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: Any, details: str = '', *args: Any, **kwargs: Any) -> None:
        """Abort the call; as RESOURCE_EXHAUSTED with ``retry-after-ms`` after a refusal."""
        if self._refused:
            retry_ms = round(self._refused[-1].overloaded.retry_after_s * 1e3)
            self._context.set_trailing_metadata((('retry-after-ms', str(retry_ms)),))
            # A model process restarting is not load: the service is briefly unavailable.
            code = grpc.StatusCode.UNAVAILABLE if isinstance(
                self._refused[-1].overloaded, ModelUnavailable) else \
                grpc.StatusCode.RESOURCE_EXHAUSTED
        await self._context.abort(code, details, *args, **kwargs)
