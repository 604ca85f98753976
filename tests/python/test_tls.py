"""TLS and mTLS with rstmdb's official Python client (rstmdb 0.2.1).

Certificates are made per test with the `openssl` command-line tool: a test
CA, a server certificate for 127.0.0.1/localhost signed by it, a client
certificate signed by it, and one signed by an unrelated CA. The client is
used exactly as an application would: `Client(host, port, tls=True,
ca_cert=...)`, plus `client_cert=`/`client_key=` for mTLS.

What the client shows when it is refused (documented for the README):
* no client certificate on an mTLS port: the TLS 1.3 handshake completes on
  the client's side and the server's alert surfaces when the client reads
  the HELLO answer: `connect()` raises `ssl.SSLError` ("tlsv13 alert
  certificate required"), an `OSError`, not the client's ConnectionError;
* a client certificate from another CA: `ssl.SSLError` ("tlsv1 alert
  unknown ca");
* a server certificate the client cannot verify: `ssl.SSLError`
  ("certificate verify failed") from `connect()`;
* a plain (non-TLS) client on a TLS port: the server closes the socket,
  and `connect()` raises `ConnectionError("Connection closed by server")`.
"""

from __future__ import annotations

import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from rstmdb import ConnectionError as ClientConnectionError

from conftest import HOST

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")

DOOR = {
    "states": ["open", "closed"],
    "initial": "open",
    "transitions": [{"from": "open", "event": "CLOSE", "to": "closed"}],
}
CERT_DAYS = "2"


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", CERT_DAYS,
            "-subj", f"/CN=corestate test {name}",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature", cwd=d)


def make_leaf(d: Path, name: str, ca: str, extensions: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN=corestate {name}", cwd=d)
    (d / f"{name}.ext").write_text(extensions)
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
            "-CAcreateserial", "-out", f"{name}.pem", "-days", CERT_DAYS,
            "-extfile", f"{name}.ext", cwd=d)


@pytest.fixture
def pki(tmp_path) -> Path:
    d = tmp_path / "pki"
    d.mkdir()
    make_ca(d, "ca")
    make_ca(d, "rogue-ca")
    make_leaf(d, "server", "ca",
              "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
              "extendedKeyUsage=serverAuth\n"
              "basicConstraints=CA:FALSE\n")
    make_leaf(d, "client", "ca", "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    make_leaf(d, "rogue-client", "rogue-ca",
              "extendedKeyUsage=clientAuth\nbasicConstraints=CA:FALSE\n")
    return d


def tls_config(pki: Path, mtls: bool = False) -> str:
    yaml = ("tls:\n"
            "  enabled: true\n"
            f"  cert_path: \"{pki / 'server.pem'}\"\n"
            f"  key_path: \"{pki / 'server.key'}\"\n")
    if mtls:
        yaml += ("  require_client_cert: true\n"
                 f"  client_ca_path: \"{pki / 'ca.pem'}\"\n")
    return yaml


async def round_trip(client, instance_id: str) -> None:
    await client.put_machine("door", 1, DOOR)
    await client.create_instance(machine="door", version=1, instance_id=instance_id)
    applied = await client.apply_event(instance_id, "CLOSE")
    assert applied.to_state == "closed"
    got = await client.get_instance(instance_id)
    assert got.state == "closed"


async def test_tls_with_the_test_ca(start_server, pki):
    server = start_server(tls_config(pki))
    async with server.client(tls=True, ca_cert=str(pki / "ca.pem")) as client:
        await round_trip(client, "door-tls")
        assert await client.ping()


async def test_tls_rejects_a_server_the_client_cannot_verify(start_server, pki):
    server = start_server(tls_config(pki))
    # The rogue CA did not sign the server's certificate.
    with pytest.raises((ssl.SSLError, ClientConnectionError)):
        async with server.client(tls=True, ca_cert=str(pki / "rogue-ca.pem")):
            pass
    async with server.client(tls=True, ca_cert=str(pki / "ca.pem")) as client:
        assert await client.ping()


async def test_plain_client_on_a_tls_port_fails_and_the_server_keeps_serving(start_server, pki):
    server = start_server(tls_config(pki))
    with pytest.raises((ClientConnectionError, OSError)):
        async with server.client():
            pass
    assert server.is_running()
    async with server.client(tls=True, ca_cert=str(pki / "ca.pem")) as client:
        assert await client.ping()


async def test_mtls_needs_a_client_certificate_from_the_configured_ca(start_server, pki):
    server = start_server(tls_config(pki, mtls=True))
    with pytest.raises((ssl.SSLError, ClientConnectionError, OSError)):
        async with server.client(tls=True, ca_cert=str(pki / "ca.pem")) as client:
            await client.ping()
    with pytest.raises((ssl.SSLError, ClientConnectionError, OSError)):
        async with server.client(tls=True, ca_cert=str(pki / "ca.pem"),
                                 client_cert=str(pki / "rogue-client.pem"),
                                 client_key=str(pki / "rogue-client.key")) as client:
            await client.ping()
    async with server.client(tls=True, ca_cert=str(pki / "ca.pem"),
                             client_cert=str(pki / "client.pem"),
                             client_key=str(pki / "client.key")) as client:
        await round_trip(client, "door-mtls")
    assert server.is_running()
