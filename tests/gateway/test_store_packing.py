"""The limits store packs its commands itself (redis-py's pipeline cost as much as an admission): the
bytes must be RESP exactly, and a value Redis would misread must never be sent."""

from __future__ import annotations

import pytest
import redis
from parley_gateway.limits.store import _pack_items


def test_items_are_resp_bulk_strings() -> None:
    assert _pack_items(["EVALSHA", "é", 12, -3, 1.5, b"\x00raw"]) == (
        b"$7\r\nEVALSHA\r\n$2\r\n\xc3\xa9\r\n$2\r\n12\r\n$2\r\n-3\r\n$3\r\n1.5\r\n$4\r\n\x00raw\r\n"
    )


@pytest.mark.parametrize("value", [True, None, object(), [1]])
def test_values_redis_would_misread_are_refused(value: object) -> None:
    with pytest.raises(TypeError):
        _pack_items([value])


def test_redis_reads_the_packed_command_as_meant(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        connection = client.connection_pool.get_connection()
        try:
            connection.send_packed_command([b"*2\r\n" + _pack_items(["ECHO", "é\r\n 1"])])
            assert connection.read_response() == "é\r\n 1".encode()
        finally:
            client.connection_pool.release(connection)
