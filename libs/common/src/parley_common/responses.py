"""Server-sent events responses that notice a client leaving at once and always release their body."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping

import anyio
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send


class LastChunk(bytes):
    """The body chunk that completes the response (the event that ends the stream, ``data: [DONE]``).

    It goes out together with the end of the response, so the client has the whole reply at once. The
    body iterator still runs to its end afterwards, unheard by the client: its cleanup (reading the
    upstream's own end of the reply, so the connection is reused) belongs to the request.
    """

    __slots__ = ()


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` that stops when the client disconnects and closes its body iterator.

    Starlette's ``StreamingResponse`` listens for the disconnect in an anyio task group (a second task
    wrapping the sender, cancel scopes, exception groups) for every stream. Here one plain task waits
    for ``http.disconnect`` and cancels the scope the body is sent in: an anyio scope, so cleanup that
    shields itself (chat recording the usage of a cut stream) still runs to its end, and the request
    then ends normally, as Starlette's does.

    The body iterator is closed in every case: if the generator was suspended at a ``yield`` when the
    client left, its cleanup (close the upstream call, record usage) runs now, not when the garbage
    collector gets to it.
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
        self._complete = False  # the client has the whole response (from then on, leaving cuts nothing)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        with anyio.CancelScope() as sending:

            async def cancel_on_disconnect() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                if not self._complete:  # a complete response is not cut by the client leaving
                    sending.cancel()  # a no-op once the scope has exited

            watcher = asyncio.get_running_loop().create_task(cancel_on_disconnect())
            try:
                await self.stream_response(send)
            finally:
                watcher.cancel()
                aclose = getattr(self._body, "aclose", None)
                if aclose is not None and not self._complete:  # a sent body has nothing left to release
                    with anyio.CancelScope(shield=True):
                        await aclose()
        if self.background is not None:  # after a cut stream too, as Starlette runs it
            await self.background()

    async def stream_response(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for chunk in self.body_iterator:
            if type(chunk) is LastChunk:
                self._complete = True
                await send({"type": "http.response.body", "body": chunk, "more_body": False})
                async for _ in self.body_iterator:  # its cleanup; nothing more reaches the client
                    pass
                return
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        self._complete = True
        await send({"type": "http.response.body", "body": b"", "more_body": False})
