"""A real Redis Cluster for tests: three redis-server processes, slots assigned and nodes joined with
CLUSTER ADDSLOTSRANGE and CLUSTER MEET (no redis-cli needed)."""

from __future__ import annotations

import random
import socket
import time
from pathlib import Path

import redis

from streamproc.embedded_redis import RedisServer

SLOTS = 16384


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _cluster_port() -> int:
    """A free port whose cluster bus port (+10000) is free too (so at most 55535)."""
    while True:
        port = random.randint(20000, 55000)
        if _bindable(port) and _bindable(port + 10000):
            return port


class LocalCluster:
    def __init__(self, data_dir: Path, nodes: int = 3) -> None:
        self.servers = []
        for i in range(nodes):
            folder = data_dir / f"node{i}"
            folder.mkdir(parents=True)
            args = ["--cluster-enabled", "yes", "--cluster-config-file", str(folder / "nodes.conf"),
                    "--cluster-node-timeout", "5000"]  # fmt: skip
            self.servers.append(RedisServer(port=_cluster_port(), data_dir=folder, extra_args=args))

    @property
    def url(self) -> str:
        return self.servers[0].url

    def start(self) -> LocalCluster:
        for server in self.servers:
            server.start()
        clients = [redis.Redis(port=s.port) for s in self.servers]
        per_node = SLOTS // len(clients)
        for i, client in enumerate(clients):
            last = SLOTS - 1 if i == len(clients) - 1 else (i + 1) * per_node - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", i * per_node, last)
        for client in clients[1:]:
            client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.servers[0].port)
        deadline = time.monotonic() + 30
        while not all(c.cluster("info")["cluster_state"] == "ok" for c in clients):
            if time.monotonic() > deadline:
                raise RuntimeError("the test cluster did not become ready")
            time.sleep(0.2)
        return self

    def node_of(self, key: str) -> int:
        """Index of the server holding ``key``'s slot."""
        slot = int(redis.Redis(port=self.servers[0].port).cluster("keyslot", key))
        per_node = SLOTS // len(self.servers)
        return min(slot // per_node, len(self.servers) - 1)

    def stop(self) -> None:
        for server in self.servers:
            server.cleanup()
