"""Simulated hosts for multi-host tests: each host is a network namespace with its own address on
a private bridge (a veth pair per host), so its processes reach the others only over that
network, and cutting a host's link (its veth set down) is a real network fault.

    with SimulatedHosts(2, root=tmp_path) as hosts:
      hosts.popen(0, [sys.executable, "-m", "tfinvconv.train", ...])   # runs inside host 0
      hosts.cut(1); hosts.restore(1)

Each host also gets its own folder (hosts.folder(i)), so nothing on disk is shared unless a test
passes one path to several hosts on purpose (as an NFS mount would be). Every process of host i
also sees its own folder at one common path, hosts.disk (a bind mount in a mount namespace of its
own), as a local disk is at the same path on every machine: a launcher that passes one path to
every rank (horovodrun) still gives each host its own files. Everything is created under names
carrying this process's id and removed on exit, also after a failure, every process still
running in a host included. (~/.ssh, the mount point of each host's ssh folder, and sshd's
/run/sshd are created where missing and left.) Needs root and `ip netns`
(SimulatedHosts.unavailable() says why not, for pytest.skip).

`hosts.start_sshd()` runs a real sshd on every host (port 22 of its address) with keys made for
this set of hosts, for launchers that reach other hosts over ssh (horovodrun); it returns the
client key for `horovodrun --ssh-identity-file`.
"""

import os
import re
import shutil
import signal
import subprocess
import time


# The name of each host's network interface (the same on every host).
INTERFACE = "hosteth0"
_USER_SSH = os.path.expanduser("~/.ssh")


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
    self.disk = os.path.join(self.root, "disk")
    self._ssh_home = os.path.join(self.root, "ssh_home")
    self._daemons, self._logs = [], []

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
    if shutil.which("unshare") is None:
      return "simulated hosts need util-linux's `unshare` (a disk of their own)"
    return None

  @staticmethod
  def sshd_unavailable():
    """Why start_sshd() cannot work here, or None."""
    missing = [tool for tool in ("/usr/sbin/sshd", "ssh", "ssh-keygen")
               if shutil.which(tool) is None]
    if missing:
      return (f"horovodrun across simulated hosts needs openssh-server and its client (missing: "
              f"{', '.join(missing)}; make test installs them with apt-get)")
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
    os.makedirs(self.disk, exist_ok=True)
    for folder in (self._ssh_home, _USER_SSH):
      os.makedirs(folder, mode=0o700, exist_ok=True)

  def close(self):
    """Removes every namespace, link and the bridge this object created (those that exist)."""
    for namespace in self.namespaces:  # sshd, and what it or a test left running there
      pids = _ip("netns", "pids", namespace, check=False).stdout.split()
      for pid in pids:
        try:
          os.kill(int(pid), signal.SIGKILL)
        except ProcessLookupError:
          pass
    for daemon in self._daemons:
      daemon.wait()
    for log in self._logs:
      log.close()
    for namespace in self.namespaces:
      _ip("netns", "del", namespace, check=False)  # takes its end of the veth pair with it
    for link in self.links:
      _ip("link", "del", link, check=False)
    _ip("link", "del", self.bridge, check=False)

  def folder(self, i):
    """Host i's own disk: a folder no other host is given."""
    return os.path.join(self.root, f"host{i}")

  def command(self, i, args):
    """`args` run on host i: in its network namespace, with its folder mounted at self.disk and
    an ssh folder of this set of hosts at ~/.ssh (ssh's known hosts stay out of the real one)."""
    mount = 'mount --bind "$1" "$2" && mount --bind "$3" "$4" && shift 4 && exec "$@"'
    return ["ip", "netns", "exec", self.namespaces[i], "unshare", "--mount", "--propagation",
            "private", "sh", "-c", mount, "sh", self.folder(i), self.disk, self._ssh_home,
            _USER_SSH, *args]

  def popen(self, i, args, **kwargs):
    """subprocess.Popen of `args` inside host i's network namespace."""
    return subprocess.Popen(self.command(i, args), **kwargs)

  def cut(self, i):
    """Host i's link goes down: its packets stop, its processes keep running."""
    _ip("link", "set", self.links[i], "down")

  def restore(self, i):
    _ip("link", "set", self.links[i], "up")

  def _link_ends(self, i):
    """(tc's arguments before `qdisc`, device) for both ends of host i's link."""
    return [([], self.links[i]), (["ip", "netns", "exec", self.namespaces[i]], INTERFACE)]

  def throttle(self, i, rate, queue):
    """Host i's link, both ways, becomes slow and lossy: a token bucket at `rate` (tc's units,
    "1mbit") with a queue of `queue` bytes ("16kb"); what does not fit is dropped. (This kernel
    has no netem; tbf gives the delay of a slow link and the loss of a full one.)"""
    for prefix, device in self._link_ends(i):
      subprocess.run([*prefix, "tc", "qdisc", "add", "dev", device, "root", "tbf", "rate", rate,
                      "burst", "4kb", "limit", queue], check=True, capture_output=True)

  def dropped(self, i):
    """Packets dropped on host i's link (both ways) since it was throttled."""
    total = 0
    for prefix, device in self._link_ends(i):
      shown = subprocess.run([*prefix, "tc", "-s", "qdisc", "show", "dev", device], check=True,
                             capture_output=True, text=True).stdout
      total += sum(int(n) for n in re.findall(r"dropped (\d+)", shown))
    return total

  def unthrottle(self, i):
    for prefix, device in self._link_ends(i):
      subprocess.run([*prefix, "tc", "qdisc", "del", "dev", device, "root"], check=False,
                     capture_output=True)

  def host_of(self, pid):
    """The host whose network a process is in."""
    shown = subprocess.run(["ip", "netns", "identify", str(pid)], capture_output=True, text=True,
                           check=True).stdout.split()
    return self.namespaces.index(shown[0])

  def ssh_client_config(self, text):
    """`text` becomes the ssh client configuration of every host (None removes it)."""
    path = os.path.join(self._ssh_home, "config")
    if text is None:
      if os.path.exists(path):
        os.remove(path)
      return
    with open(path, "w") as f:
      f.write(text)

  def start_sshd(self):
    """An sshd on every host, accepting one key made here; returns that key's private file."""
    if self._daemons:
      raise RuntimeError("start_sshd() runs once per set of hosts")
    keys = os.path.join(self.root, "ssh")
    os.makedirs(keys, mode=0o700, exist_ok=True)
    client, host_key = os.path.join(keys, "client"), os.path.join(keys, "host")
    for key in (client, host_key):
      if not os.path.exists(key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key], check=True)
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)  # sshd's privilege-separation folder
    for i, address in enumerate(self.addresses):
      config = os.path.join(keys, f"sshd{i}.conf")
      with open(config, "w") as f:
        f.write(f"ListenAddress {address}\nPort 22\nHostKey {host_key}\n"
                f"AuthorizedKeysFile {client}.pub\nPidFile none\nPermitRootLogin yes\n"
                "PasswordAuthentication no\nStrictModes no\nUsePAM no\n")
      self._logs.append(open(os.path.join(keys, f"sshd{i}.log"), "w"))
      self._daemons.append(self.popen(i, ["/usr/sbin/sshd", "-D", "-e", "-f", config],
                                       stdout=self._logs[-1], stderr=subprocess.STDOUT))
    for i, address in enumerate(self.addresses):
      self._wait_for_ssh(i, address, client)
    return client

  def _wait_for_ssh(self, i, address, client, timeout=30):
    command = ["ssh", "-o", "PasswordAuthentication=no", "-o", "StrictHostKeyChecking=no",
               "-o", "LogLevel=ERROR", "-i", client, address, "true"]
    start = time.time()
    while True:
      result = subprocess.run(self.command(0, command), capture_output=True, text=True,
                              check=False)
      if result.returncode == 0:
        return
      if time.time() - start > timeout or self._daemons[i].poll() is not None:
        raise RuntimeError(f"sshd on host {i} ({address}) does not answer: {result.stderr}")
      time.sleep(0.2)
