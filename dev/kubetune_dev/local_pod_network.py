"""Pod IPs on the local node: one local address per pod, in the host's network namespace.

Pods of the local runner share the host's network, so two replicas listening on the same port
need different addresses. Each pod gets its own address from ``POD_CIDR`` for as long as its
run lasts (container restarts keep it); it is the pod's ``status.podIP`` and what the downward
API's ``status.podIP`` gives, while ``status.hostIP`` stays ``127.0.0.1``.

Why not 127.x: Linux would route all of 127.0.0.0/8 to ``lo`` with no setup, but the apiserver
refuses loopback addresses in EndpointSlices (``ValidateNonSpecialIP``), so Services would
never list such pods. The runner instead makes ``POD_CIDR`` (198.19.0.0/16, part of the
benchmarking range 198.18.0.0/15 that no real network uses) local with one route,
``ip route add local 198.19.0.0/16 dev lo``: every address in it is then the host's own, can be
bound and is reached over loopback. The route needs CAP_NET_ADMIN (the runner is root already:
it mounts volumes) and is left in place when the runner stops (harmless; remove it with
``ip route del local 198.19.0.0/16 dev lo``). Where the route cannot be added the runner falls
back to ``FALLBACK_CIDR`` in 127.0.0.0/8 and logs that EndpointSlices will not list its pods.

A server bound to 0.0.0.0 (e.g. the trainer's metrics on :9400) answers on every pod IP, so it
is still reached at its pod's IP; two such pods on the local node clash on the port as before.
Servers that bind ``$(POD_IP)`` (downward API ``status.podIP``) are each reached at their own.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import random
import shutil
import socket
import subprocess
import threading

log = logging.getLogger(__name__)
POD_CIDR = "198.19.0.0/16"
FALLBACK_CIDR = "127.10.0.0/16"


def _bindable(address: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((address, 0))
        except OSError as error:
            if error.errno == errno.EADDRNOTAVAIL:
                return False
            raise
    return True


def ensure_local_network(cidr: str = POD_CIDR) -> ipaddress.IPv4Network:
    """Make every address of ``cidr`` local (route it to ``lo``) and return the network used:
    ``cidr``, or ``FALLBACK_CIDR`` when no route can be added (no CAP_NET_ADMIN, no ``ip``)."""
    network = ipaddress.IPv4Network(cidr)
    probe = str(next(network.hosts()))
    if _bindable(probe):
        return network
    ip = shutil.which("ip")
    if ip is not None:
        done = subprocess.run([ip, "route", "add", "local", cidr, "dev", "lo"],
                              capture_output=True, text=True, timeout=10, check=False)
        # "File exists": another runner added it between the check and now.
        if (done.returncode == 0 or "File exists" in done.stderr) and _bindable(probe):
            log.info("pod IPs from %s (routed to lo)", cidr)
            return network
        reason = done.stderr.strip()
    else:
        reason = "no `ip` command (iproute2)"
    log.warning("cannot make %s local (%s): pod IPs come from %s, and the apiserver refuses "
                "loopback addresses in EndpointSlices, so Services will not list local pods",
                cidr, reason, FALLBACK_CIDR)
    return ipaddress.IPv4Network(FALLBACK_CIDR)


class PodAddresses:
    """Hands out one address of ``network`` per pod uid; addresses are unique among live pods.

    Allocation goes round the network (the next free address after the last one handed out), so
    an address freed by a deleted pod is not reused at once while Services may still list it.
    It starts at a random point of the network (``randomize``), so that dev clusters running
    side by side on one host (parallel test sessions) do not hand out the same addresses: they
    share the host's loopback route, and two pods on one address collide on their ports.
    """

    def __init__(self, network: ipaddress.IPv4Network, *, randomize: bool = True) -> None:
        self.network = network
        self._by_uid: dict[str, str] = {}
        self._lock = threading.Lock()
        self._last = int(network.network_address)
        if randomize and network.num_addresses > 4:
            self._last += random.randrange(network.num_addresses - 2)

    def allocate(self, uid: str, preferred: str | None = None) -> str:
        """The address of pod ``uid``: its current one, else ``preferred`` (the IP a pod had
        before the runner restarted) when free and in the network, else the next free one."""
        with self._lock:
            if uid in self._by_uid:
                return self._by_uid[uid]
            taken = set(self._by_uid.values())
            if preferred and preferred not in taken and self._usable(preferred):
                self._by_uid[uid] = preferred
                return preferred
            first = int(self.network.network_address) + 1
            size = self.network.num_addresses - 2  # neither the network nor broadcast address
            for step in range(1, size + 1):
                candidate = first + (self._last - first + step) % size
                address = str(ipaddress.IPv4Address(candidate))
                if address not in taken:
                    self._last = candidate
                    self._by_uid[uid] = address
                    return address
        raise RuntimeError(f"no free pod IP left in {self.network}")

    def release(self, uid: str) -> None:
        """Free the address of pod ``uid`` (no-op when it has none)."""
        with self._lock:
            self._by_uid.pop(uid, None)

    def _usable(self, address: str) -> bool:
        try:
            ip = ipaddress.IPv4Address(address)
        except ValueError:
            return False
        return ip in self.network and ip not in (self.network.network_address,
                                                 self.network.broadcast_address)
