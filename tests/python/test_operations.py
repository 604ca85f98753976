"""Operations behaviour as rstmdb's official Python client (0.2.1) sees it:
the connection limit and a graceful shutdown.

What the client shows (documented for the README):
* over `max_connections`: `connect()` raises the client's
  `ConnectionError("Handshake failed: too many connections (max N)")` —
  the server answers the client's HELLO with RATE_LIMITED, then closes;
* after the server shut down (SIGTERM): the client notices the close in its
  read loop; `is_connected` turns False and the next request raises
  `ConnectionError("Not connected to server")` at once (requests still
  waiting fail with "Connection closed by server"); `events()` does not
  raise (it keeps waiting or ends) — without `auto_reconnect=True` a watcher
  is not told why, so it
  should check `is_connected`.
* the shutdown notice (the last frame, of type "notice") is ignored: it
  neither fails a request nor shows up as an event.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from rstmdb import ConnectionError as ClientConnectionError

DOOR = {
    "states": ["open", "closed"],
    "initial": "open",
    "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}],
}
SHUTDOWN_TIMEOUT_S = 15
CONNECT_RETRY_S = 0.05


async def connected(server, attempts: int = 100):
    """A connected client; retries while the readiness probe's connection
    may still count against a small limit."""
    for _ in range(attempts):
        client = server.client()
        try:
            await client.connect()
            return client
        except ClientConnectionError:
            await asyncio.sleep(CONNECT_RETRY_S)
    pytest.fail("could not connect")


async def test_over_the_connection_limit_the_client_is_told_why(start_server):
    server = start_server("network:\n  max_connections: 2\n")
    first = await connected(server)
    second = await connected(server)
    refused = server.client()
    with pytest.raises(ClientConnectionError) as info:
        await refused.connect()
    assert "too many connections (max 2)" in str(info.value)
    # The accepted connections keep working.
    assert await first.ping()
    assert await second.ping()
    await second.close()
    third = await connected(server)
    assert await third.ping()
    await first.close()
    await third.close()


async def test_sigterm_exits_0_keeps_every_write_and_the_client_sees_the_close(start_server):
    server = start_server()
    client = await connected(server)
    watcher = await connected(server)
    await client.put_machine("door", 1, DOOR)
    await watcher.watch_all()
    for i in range(20):
        await client.create_instance(machine="door", version=1, instance_id=f"d-{i}")
        await client.apply_event(f"d-{i}", "CLOSE")
    stream = watcher.events()
    for i in range(20):
        event = await asyncio.wait_for(anext(stream), SHUTDOWN_TIMEOUT_S)
        assert event.instance_id == f"d-{i}"

    os.kill(server.proc.pid, signal.SIGTERM)
    code = await asyncio.get_running_loop().run_in_executor(
        None, lambda: server.proc.wait(timeout=SHUTDOWN_TIMEOUT_S))
    assert code == 0, server.log_tail()
    await asyncio.sleep(0.2)
    assert not client.is_connected
    with pytest.raises(ClientConnectionError) as info:
        await client.ping()
    assert "Not connected" in str(info.value)
    await client.close()
    # The notice that preceded the close is not an event: the stream yields
    # nothing more (whether it then waits or ends).
    assert not watcher.is_connected
    extra = []

    async def drain():
        async for event in stream:
            extra.append(event)

    try:
        await asyncio.wait_for(drain(), 0.5)
    except asyncio.TimeoutError:
        pass
    assert extra == []
    await watcher.close()

    server.kill()  # reaps; the process already exited
    server.start()
    assert "torn" not in server.log_path.read_text().lower()
    async with server.client() as again:
        for i in range(20):
            got = await again.get_instance(f"d-{i}")
            assert got.state == "closed"
