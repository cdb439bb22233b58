"""Test helpers for Redis over TLS with ACL users.

- :func:`make_certs`: a throwaway CA, a server certificate for 127.0.0.1/localhost and a client
  certificate (for mutual TLS), made with the ``openssl`` command line into a directory;
- :class:`TLSRedisServer`: a real redis-server listening on TLS only (``--port 0 --tls-port N``), with
  ``--tls-auth-clients optional|yes``, the ``default`` user disabled (or protected by a password) and
  ACL users given as ``--user`` arguments or an ACL file (``--aclfile``, passwords stored as SHA-256).

The harness itself talks to the server as ``sp-test-admin``, a full-access user with a random password.
"""

from __future__ import annotations

import hashlib
import secrets
import shutil
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pytest
import redis

from streamproc.embedded_redis import RedisServer
from streamproc.errors import StreamprocError

ADMIN = "sp-test-admin"

_OPENSSL_CONFIG = """\
[req]
distinguished_name = dn
prompt = no
[dn]
CN = streamproc-test
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = {san}
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = clientAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
"""


@dataclass(frozen=True)
class Certs:
    """PEM files of a throwaway PKI: CA, server and client certificates and their keys."""

    ca: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def openssl() -> str:
    """The openssl binary; skips the calling test when there is none."""
    found = shutil.which("openssl")
    if found is None:
        pytest.skip("the openssl command line is needed to make test certificates")
    return found


def _run(*args: str) -> None:
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(args[:3])} failed: {result.stderr.strip()[-1000:]}")


def make_certs(directory: Path, *, hosts: Sequence[str] = ("127.0.0.1", "localhost"), days: int = 2) -> Certs:
    """Create a CA and server/client certificates signed by it (EC P-256) in ``directory``."""
    binary = openssl()
    directory.mkdir(parents=True, exist_ok=True)
    san = ", ".join(f"IP:{h}" if h.replace(".", "").isdigit() or ":" in h else f"DNS:{h}" for h in hosts)
    config = directory / "openssl.cnf"
    config.write_text(_OPENSSL_CONFIG.format(san=san))
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    certs = Certs(
        ca=directory / "ca.crt",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.crt",
        server_key=directory / "server.key",
        client_cert=directory / "client.crt",
        client_key=directory / "client.key",
    )
    _run(
        binary, "req", "-x509", "-new", *key_args, "-keyout", str(certs.ca_key), "-out", str(certs.ca),
        "-days", str(days), "-subj", "/CN=streamproc test CA", "-config", str(config), "-extensions", "ca",
    )  # fmt: skip
    for role, cert, key, cn in (
        ("server", certs.server_cert, certs.server_key, hosts[0]),
        ("client", certs.client_cert, certs.client_key, "streamproc-worker"),
    ):
        csr = directory / f"{role}.csr"
        _run(binary, "req", "-new", *key_args, "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={cn}",
             "-config", str(config))  # fmt: skip
        _run(
            binary, "x509", "-req", "-in", str(csr), "-CA", str(certs.ca), "-CAkey", str(certs.ca_key),
            "-set_serial", str(secrets.randbits(63)), "-out", str(cert), "-days", str(days),
            "-extfile", str(config), "-extensions", role,
        )  # fmt: skip
        csr.unlink()
    for key in (certs.ca_key, certs.server_key, certs.client_key):
        key.chmod(0o600)
    return certs


@dataclass(frozen=True)
class AclUser:
    """A Redis ACL user: ``user NAME on <password> RULES...``."""

    name: str
    password: str
    rules: tuple[str, ...] = ()

    def acl_line(self) -> str:
        """The line of an ACL file (the password stored as its SHA-256, as ACL SAVE would)."""
        digest = hashlib.sha256(self.password.encode()).hexdigest()
        return " ".join(["user", self.name, "on", f"#{digest}", *self.rules])

    def args(self) -> list[str]:
        """The same user as redis-server command-line arguments."""
        return ["--user", self.name, "on", f">{self.password}", *self.rules]


def new_password() -> str:
    return secrets.token_urlsafe(18)


class TLSRedisServer(RedisServer):
    """A redis-server on a TLS port only, with ACL users; the ``default`` user is off unless
    ``default_password`` is given (then it has full access with that password)."""

    def __init__(
        self,
        certs: Certs,
        *,
        users: Sequence[AclUser] = (),
        default_password: str | None = None,
        auth_clients: Literal["no", "optional", "yes"] = "optional",
        acl: Literal["file", "args"] = "file",
        port: int | None = None,
        data_dir: Path | None = None,
        extra_args: list[str] | None = None,
    ) -> None:
        super().__init__(port=port, data_dir=data_dir, extra_args=extra_args)
        self.certs = certs
        self.auth_clients = auth_clients
        self.acl = acl
        self.admin = AclUser(ADMIN, new_password(), ("~*", "&*", "+@all"))
        self.default_password = default_password
        self.users = list(users)

    def _default_user(self) -> AclUser | None:
        """The ``default`` user with full access and a password, or None: disabled."""
        if self.default_password is None:
            return None
        return AclUser("default", self.default_password, ("~*", "&*", "+@all"))

    def _acl_args(self) -> list[str]:
        default = self._default_user()
        users = [self.admin, *self.users]
        if self.acl == "args":
            out = default.args() if default else ["--user", "default", "off"]
            for user in users:
                out += user.args()
            return out
        path = self.data_dir / "users.acl"
        lines = [default.acl_line() if default else "user default off", *(user.acl_line() for user in users)]
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return ["--aclfile", str(path)]

    def command(self) -> list[str]:
        args = super().command()
        args[args.index("--port") + 1] = "0"  # no plain-text port at all
        return [
            *args,
            "--tls-port", str(self.port),
            "--tls-cert-file", str(self.certs.server_cert),
            "--tls-key-file", str(self.certs.server_key),
            "--tls-ca-cert-file", str(self.certs.ca),
            "--tls-auth-clients", self.auth_clients,
            *self._acl_args(),
        ]  # fmt: skip

    # -- addresses and clients ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """The address without credentials."""
        return f"rediss://127.0.0.1:{self.port}/0"

    def url_for(self, user: AclUser | str, password: str | None = None) -> str:
        """``rediss://USER:PASS@127.0.0.1:PORT/0`` (user-info percent-encoded)."""
        name = user.name if isinstance(user, AclUser) else user
        secret = password if password is not None else (user.password if isinstance(user, AclUser) else "")
        return f"rediss://{quote(name, safe='')}:{quote(secret, safe='')}@127.0.0.1:{self.port}/0"

    def redis_config(
        self, user: AclUser | str, password: str | None = None, *, client_cert: bool = True
    ) -> dict[str, Any]:
        """The ``redis:`` section of a streamproc config file for ``user``."""
        section: dict[str, Any] = {"url": self.url_for(user, password), "tls_ca": str(self.certs.ca)}
        if client_cert:
            section |= {"tls_cert": str(self.certs.client_cert), "tls_key": str(self.certs.client_key)}
        return section

    def client(self, user: AclUser | None = None, **kwargs: Any) -> redis.Redis:
        """A TLS client (with the client certificate) logged in as ``user`` (default: the admin)."""
        user = user or self.admin
        return redis.Redis(
            host="127.0.0.1",
            port=self.port,
            username=user.name,
            password=user.password,
            ssl=True,
            ssl_ca_certs=str(self.certs.ca),
            ssl_certfile=str(self.certs.client_cert),
            ssl_keyfile=str(self.certs.client_key),
            **kwargs,
        )

    def acl_denials(self) -> list[dict[str, Any]]:
        """ACL LOG entries (commands, keys or channels refused), newest first."""
        with self.client() as admin:
            return list(admin.acl_log())

    def reset_acl_log(self) -> None:
        with self.client() as admin:
            admin.acl_log_reset()

    # -- life -----------------------------------------------------------------------------------------

    def start(self, timeout: float = 10.0) -> TLSRedisServer:
        super().start(timeout)
        return self

    def __enter__(self) -> TLSRedisServer:
        return self.start()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        client = self.client(socket_timeout=1, socket_connect_timeout=1)
        try:
            while True:
                if self.process is not None and self.process.poll() is not None:
                    raise StreamprocError(f"redis-server exited with {self.process.returncode}: {self._log_tail()}")
                try:
                    if client.ping():
                        return
                except (redis.exceptions.ConnectionError, redis.exceptions.BusyLoadingError):
                    pass
                if time.monotonic() > deadline:
                    raise StreamprocError(f"TLS redis-server on port {self.port} not ready: {self._log_tail()}")
                time.sleep(0.05)
        finally:
            client.close()

    def _log_tail(self) -> str:
        log = self.data_dir / "redis.log"
        return " | ".join(log.read_text(errors="replace").splitlines()[-5:]) if log.exists() else "(no log)"
