"""Simulated hosts for multi-host tests: each host is a network namespace with its own address on
a private bridge (a veth pair per host), so its processes reach the others only over that
network, and cutting a host's link (its veth set down) is a real network fault.

    with SimulatedHosts(2, root=tmp_path) as hosts:
      hosts.popen(0, [sys.executable, "-m", "tfinvconv.train", ...])   # runs inside host 0
      hosts.cut(1); hosts.restore(1)

Each host also gets its own folder (hosts.folder(i)), so nothing on disk is shared unless a test
passes one path to several hosts on purpose (as an NFS mount would be). Everything is created
under names carrying this process's id and removed on exit, also after a failure. Needs root and
`ip netns` (SimulatedHosts.unavailable() says why not, for pytest.skip).
"""

import os
import shutil
import subprocess


# The name of each host's network interface (the same on every host).
INTERFACE = "hosteth0"


def _ip(*args, check=True):
  return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


class SimulatedHosts:
  """`count` hosts at 10.<subnet>.0.2, .3, ... on a bridge that also holds 10.<subnet>.0.1."""

  def __init__(self, count, root, subnet=None):
    self.count, self.root = count, str(root)
    tag = os.getpid() % 100000
    self.subnet = subnet if subnet is not None else 64 + tag % 128
    self.bridge = f"tfib{tag}"
    self.namespaces = [f"tfi{tag}h{i}" for i in range(count)]
    self.links = [f"tfi{tag}v{i}" for i in range(count)]  # bridge side of each veth pair
    self.addresses = [f"10.{self.subnet}.0.{i + 2}" for i in range(count)]

  @staticmethod
  def unavailable():
    """Why this machine cannot simulate hosts, or None."""
    if os.geteuid() != 0:
      return "simulated hosts need root (network namespaces)"
    if shutil.which("ip") is None:
      return "simulated hosts need iproute2's `ip`"
    probe = f"tfiprobe{os.getpid()}"
    result = _ip("netns", "add", probe, check=False)
    if result.returncode != 0:
      return f"`ip netns add` fails here: {result.stderr.strip()}"
    _ip("netns", "del", probe, check=False)
    return None

  def __enter__(self):
    try:
      self._create()
    except BaseException:
      self.close()
      raise
    return self

  def __exit__(self, *exc):
    self.close()

  def _create(self):
    _ip("link", "add", self.bridge, "type", "bridge")
    _ip("addr", "add", f"10.{self.subnet}.0.1/24", "dev", self.bridge)
    _ip("link", "set", self.bridge, "up")
    for namespace, link, address in zip(self.namespaces, self.links, self.addresses):
      peer = link + "p"
      _ip("netns", "add", namespace)
      _ip("link", "add", link, "type", "veth", "peer", "name", peer)
      _ip("link", "set", peer, "netns", namespace)
      _ip("link", "set", link, "master", self.bridge)
      _ip("link", "set", link, "up")
      # One interface name on every host, as on real clusters (horovodrun --network-interface).
      _ip("-n", namespace, "link", "set", peer, "name", INTERFACE)
      _ip("-n", namespace, "addr", "add", f"{address}/24", "dev", INTERFACE)
      _ip("-n", namespace, "link", "set", INTERFACE, "up")
      _ip("-n", namespace, "link", "set", "lo", "up")
    for i in range(self.count):
      os.makedirs(self.folder(i), exist_ok=True)

  def close(self):
    """Removes every namespace, link and the bridge this object created (those that exist)."""
    for namespace in self.namespaces:
      _ip("netns", "del", namespace, check=False)  # takes its end of the veth pair with it
    for link in self.links:
      _ip("link", "del", link, check=False)
    _ip("link", "del", self.bridge, check=False)

  def folder(self, i):
    """Host i's own disk: a folder no other host is given."""
    return os.path.join(self.root, f"host{i}")

  def command(self, i, args):
    return ["ip", "netns", "exec", self.namespaces[i], *args]

  def popen(self, i, args, **kwargs):
    """subprocess.Popen of `args` inside host i's network namespace."""
    return subprocess.Popen(self.command(i, args), **kwargs)

  def cut(self, i):
    """Host i's link goes down: its packets stop, its processes keep running."""
    _ip("link", "set", self.links[i], "down")

  def restore(self, i):
    _ip("link", "set", self.links[i], "up")
