import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import redis

from infra.devstack import free_port, redis_server_binary

PRIMARIES = 3
SLOTS = 16384
WAIT = 20.0


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _node_port() -> int:
    # Redis before 7 puts a node's cluster bus on its port + 10000, with no option to move it.
    while True:
        port = free_port()
        if port + 10000 < 65536 and _free(port + 10000):
            return port


def _wait(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"Redis Cluster: {what} within {WAIT} s")
        time.sleep(0.05)


def _answers(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@contextmanager
def local_cluster(workdir: Path, primaries: int = PRIMARIES, replicas: int = 0, binary: str = "") -> Iterator[str]:
    """A Redis Cluster of `primaries` nodes, each with `replicas` replicas, on free local ports, from
    `binary` (default: the redis-server the dev stack uses); yields its URL."""
    with ExitStack() as stack:
        def start() -> tuple[int, redis.Redis]:
            port = _node_port()
            node_dir = workdir / f"node-{port}"
            node_dir.mkdir(parents=True)
            process = subprocess.Popen(
                [binary or redis_server_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                 "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                 "--cluster-node-timeout", "2000", "--save", "", "--appendonly", "no",
                 "--repl-diskless-sync-delay", "0"],  # a new replica syncs at once, not after 5 s
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            stack.callback(_stop, process)
            client = redis.Redis(port=port)
            stack.callback(client.close)
            _wait(lambda: _answers(client), "a node did not start")
            return port, client

        nodes = [start() for _ in range(primaries * (1 + replicas))]
        heads, followers = nodes[:primaries], nodes[primaries:]
        share = -(-SLOTS // primaries)
        for index, (_, client) in enumerate(heads):
            client.execute_command("CLUSTER ADDSLOTS", *range(index * share, min((index + 1) * share, SLOTS)))
        for _, client in nodes[1:]:
            client.execute_command("CLUSTER MEET", "127.0.0.1", nodes[0][0])
        _wait(lambda: all(_ready(client, len(nodes)) for _, client in nodes), "the nodes did not agree")
        for index, (_, client) in enumerate(followers):
            client.execute_command("CLUSTER REPLICATE", heads[index % primaries][1].execute_command("CLUSTER MYID"))
        _wait(lambda: all(int(client.info("replication")["connected_slaves"]) == replicas for _, client in heads)
              and all(client.info("replication")["master_link_status"] == "up" for _, client in followers),
              "the replicas did not follow")
        yield f"redis+cluster://127.0.0.1:{nodes[0][0]}"


def _ready(client: redis.Redis, nodes: int) -> bool:
    info = client.cluster("INFO")
    return bool(info["cluster_state"] == "ok" and int(info["cluster_known_nodes"]) == nodes)


def _stop(process: "subprocess.Popen[bytes]") -> None:
    process.kill()
    process.wait()
