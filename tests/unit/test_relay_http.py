"""The relay's small HTTP/1.1 client against real sockets: keep-alive reuse, a kept-alive connection the
server closed meanwhile, chunked bodies, timeouts, refused connections, and answers that are not HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from exporter.relay.http import Client, HTTPError

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}"


def answer(body: bytes, extra: str = "") -> bytes:
    return f"HTTP/1.1 200 OK\r\ncontent-length: {len(body)}\r\n{extra}\r\n".encode() + body


def test_keep_alive_reuses_one_connection_and_sends_headers_and_params():
    seen: list[str] = []
    connections = 0

    async def handler(reader, writer):
        nonlocal connections
        connections += 1
        try:
            while True:
                seen.append((await reader.readuntil(b"\r\n\r\n")).decode())
                writer.write(answer(b'{"ok": true}'))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()  # the client went away

    async def main():
        server, url = await serve(handler)
        client = Client({"Authorization": "Bearer t"})
        for _ in range(3):
            resp = await client.get(url + "/api/flows", [("to_port", "80"), ("limit", "5")])
            assert (resp.status, resp.body) == (200, b'{"ok": true}')
        await client.aclose()
        server.close()

    asyncio.run(main())
    assert connections == 1
    assert seen[0].startswith("GET /api/flows?to_port=80&limit=5 HTTP/1.1\r\n")
    assert "Authorization: Bearer t\r\n" in seen[0]


def test_a_connection_closed_by_the_server_is_replaced_and_chunked_bodies_are_read():
    async def handler(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b'HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
        )
        await writer.drain()
        writer.close()  # keep-alive announced, connection closed anyway

    async def main():
        server, url = await serve(handler)
        client = Client()
        bodies = [(await client.get(url + "/x")).body for _ in range(3)]
        server.close()
        return bodies

    assert asyncio.run(main()) == [b'{"a":1}'] * 3


def test_failures_are_named():
    async def silent(reader, writer):
        await asyncio.sleep(5)

    async def garbage(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\n")
        await writer.drain()

    async def main():
        client = Client()
        out = []
        server, url = await serve(silent)
        with pytest.raises(HTTPError) as e:
            await client.get(url + "/", timeout=0.2)
        out.append((e.value.label, str(e.value)))
        server.close()
        server, url = await serve(garbage)
        with pytest.raises(HTTPError) as e:
            await client.get(url + "/")
        out.append((e.value.label, str(e.value)))
        server.close()
        await server.wait_closed()
        with pytest.raises(HTTPError) as e:
            await client.get(url + "/")
        out.append((e.value.label, str(e.value)))
        return out

    timeout, protocol, connect = asyncio.run(main())
    assert timeout == ("timeout", "timed out after 0.2 s")
    assert protocol[0] == "protocol" and "not an HTTP answer" in protocol[1]
    assert connect[0] == "connect" and connect[1].startswith("cannot connect")


def test_a_post_sends_its_body_and_keeps_the_connection():
    seen: list[bytes] = []
    connections = 0

    async def handler(reader, writer):
        nonlocal connections
        connections += 1
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode()
                sizes = [
                    int(h.split(":", 1)[1]) for h in head.split("\r\n") if h.startswith("Content-Length:")
                ]
                length = sizes[0] if sizes else 0
                seen.append(head.encode() + await reader.readexactly(length))
                writer.write(answer(b'{"ok": true}'))
                await writer.drain()
        except asyncio.IncompleteReadError:
            writer.close()

    async def main():
        server, url = await serve(handler)
        client = Client()
        posted = await client.post(url + "/api/policy/whatif", b"kind: NetworkPolicy\n", "application/yaml")
        got = await client.get(url + "/api/policy")
        await client.aclose()
        server.close()
        return posted, got

    assert [r.status for r in asyncio.run(main())] == [200, 200] and connections == 1
    assert seen[0].startswith(b"POST /api/policy/whatif HTTP/1.1\r\n")
    assert b"Content-Type: application/yaml\r\n" in seen[0] and seen[0].endswith(
        b"\r\n\r\nkind: NetworkPolicy\n"
    )
    assert seen[1].startswith(b"GET /api/policy HTTP/1.1\r\n") and b"Content-Length" not in seen[1]
