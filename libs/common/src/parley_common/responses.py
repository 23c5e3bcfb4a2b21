"""Server-sent events responses that always release what their body holds."""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Send


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` whose body iterator is closed however the response ends.

    When the client disconnects, Starlette cancels the task that sends the body; if the generator was
    suspended at a ``yield`` at that moment it would be left for the garbage collector to close, later and
    outside the request. Closing it here runs its cleanup (cancel the provider call, record usage) at once.
    """

    media_type = "text/event-stream"

    def __init__(
        self, content: AsyncIterator[bytes], headers: Mapping[str, str] | None = None, status_code: int = 200
    ) -> None:
        super().__init__(
            content,
            status_code=status_code,
            headers={"cache-control": "no-cache", "x-accel-buffering": "no", **(headers or {})},
        )
        self._body = content

    async def stream_response(self, send: Send) -> None:
        try:
            await super().stream_response(send)
        finally:
            with anyio.CancelScope(shield=True):
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None:
                    await aclose()
