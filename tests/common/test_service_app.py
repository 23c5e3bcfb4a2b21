"""create_service_app: what every HTTP service gets around its own lifespan."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from parley_common.api import create_service_app


async def test_startup_objects_are_frozen_once_the_services_lifespan_has_started() -> None:
    frozen_during_startup: list[int] = []

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pools = [[] for _ in range(1000)]  # long-lived (and collector-tracked) objects
        frozen_during_startup.append(gc.get_freeze_count())
        yield

    app = create_service_app(service="test", lifespan=lifespan)
    gc.unfreeze()
    try:
        async with app.router.lifespan_context(app):
            assert frozen_during_startup == [0]  # the service's own startup runs first
            # Everything alive now, the startup's objects included, is out of the collector's reach.
            assert gc.get_freeze_count() >= 1000
            walked = {id(o) for o in gc.get_objects()}  # what a full collection would walk
            assert not any(id(pool) in walked for pool in app.state.pools)
    finally:
        gc.unfreeze()
