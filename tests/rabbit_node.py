"""A private RabbitMQ node for crash drills, so the shared broker on 5672 is never touched.

Each `RabbitNode` has its own node name (`swgwdrill-<random>@localhost`), AMQP and
distribution ports on 127.0.0.1, Erlang cookie, and data/log/config files under one folder.
It is started from the package's own script (`/usr/lib/rabbitmq/bin/rabbitmq-server`, not
the `/usr/sbin` wrapper, which switches to the rabbitmq user and would ignore our folder)
with `RUNNING_UNDER_SYSTEMD=1`, which makes the script `exec` the Erlang VM: the child's pid
*is* the beam process, so `kill()` is a real `kill -9` of the broker. `start()` again reuses
the same ports, name and data, like a crashed server coming back.

What was found empirically (RabbitMQ 3.10, Erlang 25, 2 cores): a cold start takes about
5-7 s to the first AMQP handshake and a restart on the same data about 5 s; each
`rabbitmqctl` call costs ~0.6 s of CLI start-up. Hence one node per drill module.

Readiness is a real AMQP handshake (protocol header → Connection.Start), polled with a
deadline; a broker that died during boot fails at once with the tail of its log.

API (blocking; drills call it through `asyncio.to_thread` when a loop must keep running)::

    node = RabbitNode(base_dir)        # picks free ports, writes config, no process yet
    node.start(timeout_s=60)           # spawn + wait for AMQP
    node.url                           # amqp://guest:guest@127.0.0.1:<port>/
    node.kill()                        # SIGKILL the VM, wait until the port refuses
    node.stop()                        # graceful: rabbitmqctl stop
    node.memory_alarm(True/False)      # tiny vm_memory_high_watermark / back to 0.4
    node.disk_alarm(True/False)        # absurd disk_free_limit / back to 50MB
    node.wait_alarm(True/False)        # poll `rabbitmq-diagnostics check_alarms`
    node.ctl("list_queues")            # any rabbitmqctl command against this node
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

SBIN_CANDIDATES = (
    Path(os.environ.get("SWGW_RABBITMQ_SBIN", "/usr/lib/rabbitmq/bin")),
    Path("/usr/lib/rabbitmq/sbin"),
)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"


def rabbitmq_sbin() -> Path | None:
    """The folder with the unwrapped rabbitmq-server/rabbitmqctl scripts, if installed."""
    for folder in SBIN_CANDIDATES:
        if (folder / "rabbitmq-server").is_file():
            return folder
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def amqp_handshake(port: int, timeout_s: float = 1.0) -> bool:
    """True if something on `port` answers the AMQP 0-9-1 header with Connection.Start."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as s:
            s.sendall(_AMQP_HEADER)
            frame = s.recv(7)
    except OSError:
        return False
    # frame type 1 (method) on channel 0: Connection.Start
    return len(frame) == 7 and frame[0] == 1 and frame[1:3] == b"\x00\x00"


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class RabbitNodeError(RuntimeError):
    """The drill node did not start, stop or obey; the message carries the log tail."""


class RabbitNode:
    """One private broker. `base_dir` holds everything it writes; ports are picked once."""

    def __init__(self, base_dir: Path, *, name: str | None = None, cookie: str | None = None) -> None:
        sbin = rabbitmq_sbin()
        if sbin is None:
            raise RabbitNodeError("rabbitmq-server is not installed (ops/setup-env.sh installs it)")
        self.sbin = sbin
        self.base = base_dir
        self.name = name or f"swgwdrill-{secrets.token_hex(4)}@localhost"
        self.port = _free_port()
        self.dist_port = _free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts: list[float] = []  # seconds each start took to the AMQP handshake
        home = base_dir / "home"
        home.mkdir(parents=True, exist_ok=True)
        cookie_file = home / ".erlang.cookie"
        if not cookie_file.exists():
            cookie_file.write_text(cookie or secrets.token_hex(16).upper())
            cookie_file.chmod(0o400)
        (base_dir / "rabbitmq.conf").write_text(
            f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
            "vm_memory_high_watermark.relative = 0.4\n"
            "disk_free_limit.absolute = 50MB\n"
        )
        (base_dir / "enabled_plugins").write_text("[].\n")
        (base_dir / "rabbitmq-env.conf").write_text("")  # keeps /etc/rabbitmq/rabbitmq-env.conf out
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "HOME": str(home),  # the CLI tools and the node read the cookie from here
            "RABBITMQ_NODENAME": self.name,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(base_dir / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base_dir / "log"),
            "RABBITMQ_CONFIG_FILE": str(base_dir / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base_dir / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base_dir / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base_dir / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base_dir / "rabbit.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RUNNING_UNDER_SYSTEMD": "1",  # exec the VM: our child pid is beam.smp
        }
        atexit.register(self._reap)

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self, timeout_s: float = 60.0) -> float:
        """Start (or restart on the same data) and wait for AMQP; returns the seconds it took."""
        if self.running:
            raise RabbitNodeError(f"{self.name} is already running")
        started = time.monotonic()
        out = (self.base / "console.log").open("ab")
        self.proc = subprocess.Popen(
            [str(self.sbin / "rabbitmq-server")],
            env=self.env,
            cwd=self.base,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C on pytest must not reach the broker first
        )
        out.close()
        deadline = started + timeout_s
        while not amqp_handshake(self.port):
            if self.proc.poll() is not None:
                raise RabbitNodeError(
                    f"{self.name} exited with {self.proc.returncode} while booting:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self._reap()
                raise RabbitNodeError(f"{self.name} not ready after {timeout_s:g}s:\n{self.log_tail()}")
            time.sleep(0.1)
        took = time.monotonic() - started
        self.starts.append(took)
        return took

    def kill(self) -> None:
        """kill -9 the VM (a crash, not a shutdown) and wait until the port refuses."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._wait_port_closed()

    def stop(self, timeout_s: float = 60.0) -> None:
        """Graceful stop through rabbitmqctl, as an operator would."""
        if not self.running:
            return
        self.ctl("stop", timeout_s=timeout_s)
        assert self.proc is not None
        self.proc.wait(timeout=timeout_s)
        self._wait_port_closed()

    def _wait_port_closed(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while port_open(self.port):
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"port {self.port} still open after {self.name} stopped")
            time.sleep(0.05)

    def _reap(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)

    def remove(self) -> None:
        """Kill the node and delete its folder."""
        self._reap()
        shutil.rmtree(self.base, ignore_errors=True)

    # -- control ---------------------------------------------------------------------------------
    def ctl(self, *args: str, tool: str = "rabbitmqctl", timeout_s: float = 60.0, check: bool = True) -> str:
        """Run a CLI tool against this node; returns stdout, raises with output on failure."""
        result = subprocess.run(
            [str(self.sbin / tool), "-n", self.name, "-q", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
        if check and result.returncode != 0:
            raise RabbitNodeError(
                f"{tool} {' '.join(args)} exited {result.returncode}: {result.stderr or result.stdout}"
            )
        return result.stdout

    def memory_alarm(self, on: bool) -> None:
        """A watermark no VM can stay under raises the memory alarm; 0.4 is the default."""
        self.ctl("set_vm_memory_high_watermark", "0.0000001" if on else "0.4")

    def disk_alarm(self, on: bool) -> None:
        """A free-disk limit no disk can meet raises the disk alarm; 50MB is the default."""
        self.ctl("set_disk_free_limit", "1000000000000000" if on else "50MB")

    def alarms_active(self) -> bool:
        result = subprocess.run(
            [str(self.sbin / "rabbitmq-diagnostics"), "-n", self.name, "-q", "check_alarms"],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode not in (0, 69, 70):
            raise RabbitNodeError(f"check_alarms exited {result.returncode}: {result.stderr}")
        return result.returncode != 0

    def wait_alarm(self, active: bool, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while self.alarms_active() is not active:
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"alarm on {self.name} not {'raised' if active else 'cleared'} in {timeout_s:g}s")
            time.sleep(0.2)

    def log_tail(self, lines: int = 40) -> str:
        chunks = []
        for path in [self.base / "console.log", *sorted((self.base / "log").glob("*.log"))]:
            with contextlib.suppress(OSError):
                chunks.append(f"--- {path.name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(chunks)


class RabbitCluster:
    """Three (or `size`) private nodes on loopback joined into one cluster, for the replica drill.

    Each node is a `RabbitNode` (own name, ports, data folder) sharing one Erlang cookie; the
    first is the seed and the others `join_cluster` it (stop_app, join, start_app), as the
    RabbitMQ clustering guide does it by hand. `start()` boots the nodes in parallel threads
    (a boot is mostly waiting), then joins them one by one and checks `cluster_status` lists
    them all running. `kill(node)` is a `kill -9`; `restart(node)` brings it back on its data,
    where it rejoins by itself.
    """

    def __init__(self, base_dir: Path, size: int = 3) -> None:
        tag = secrets.token_hex(3)
        cookie = secrets.token_hex(16).upper()
        self.nodes = [
            RabbitNode(base_dir / f"node{i}", name=f"swgwclu{i}-{tag}@localhost", cookie=cookie) for i in range(size)
        ]

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def seed(self) -> RabbitNode:
        return self.nodes[0]

    def start(self, timeout_s: float = 120.0) -> float:
        """Boot every node, join them to the first; returns the seconds it took."""
        started = time.monotonic()
        errors: list[BaseException] = []

        def boot(node: RabbitNode) -> None:
            try:
                node.start(timeout_s=timeout_s)
            except BaseException as exc:  # re-raised below, in the caller's thread
                errors.append(exc)

        threads = [threading.Thread(target=boot, args=(n,)) for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            self.remove()
            raise errors[0]
        for node in self.nodes[1:]:
            node.ctl("stop_app")
            node.ctl("join_cluster", self.seed.name)
            node.ctl("start_app")
        self.wait_members(len(self.nodes))
        return time.monotonic() - started

    def running_members(self, via: RabbitNode | None = None) -> list[str]:
        """Names of the cluster's running nodes, as `via` (default: a running node) sees them."""
        node = via or next(n for n in self.nodes if n.running)
        status = json.loads(node.ctl("cluster_status", "--formatter", "json"))
        return sorted(status.get("running_nodes", []))

    def wait_members(self, count: int, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while len(self.running_members()) < count:
            if time.monotonic() > deadline:
                raise RabbitNodeError(f"cluster has {self.running_members()} running, wanted {count}")
            time.sleep(0.5)

    def node(self, name: str) -> RabbitNode:
        return next(n for n in self.nodes if n.name == name)

    def leader(self, queue: str) -> RabbitNode:
        """The node that leads quorum queue `queue` now (`rabbitmqctl list_queues name leader`)."""
        via = next(n for n in self.nodes if n.running)
        rows = json.loads(via.ctl("list_queues", "name", "leader", "--formatter", "json"))
        for row in rows:
            if row.get("name") == queue and row.get("leader"):
                return self.node(str(row["leader"]))
        raise RabbitNodeError(f"no leader for {queue!r} in {rows}")

    def members(self, queue: str) -> list[str]:
        """The quorum queue's members (`rabbitmqctl list_queues name members`)."""
        via = next(n for n in self.nodes if n.running)
        rows = json.loads(via.ctl("list_queues", "name", "members", "--formatter", "json"))
        return next((sorted(r["members"]) for r in rows if r.get("name") == queue), [])

    def consumers(self, queue: str) -> list[dict[str, object]]:
        """`rabbitmqctl list_consumers` rows of `queue`: consumer_tag, active, activity_status."""
        via = next(n for n in self.nodes if n.running)
        rows = json.loads(
            via.ctl("list_consumers", "queue_name", "consumer_tag", "active", "activity_status", "--formatter", "json")
        )
        return [r for r in rows if r.get("queue_name") == queue]

    def describe(self, queue: str) -> str:
        """Leader, members, state and consumers of `queue`, for a drill's failure message."""
        via = next(n for n in self.nodes if n.running)
        status = via.ctl("list_queues", "name", "leader", "members", "online", "messages", "state", check=False)
        row = next((line for line in status.splitlines() if line.startswith(queue)), status)
        return f"{row}; consumers {self.consumers(queue)}"

    def remove(self) -> None:
        for node in self.nodes:
            node.remove()
