"""`python -m tfinvconv.train --strategy multiworker` across two simulated hosts (tests/hosts.py: network
namespaces on a bridge, each with its own address and its own folder): the workers agree, a
worker whose disk holds no checkpoint resumes from the chief's, a cut link ends every worker
within a bound with a message naming the lost one, and a host that does not answer at start is
an error within --connect-timeout, not a hang."""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tests.hosts import SimulatedHosts
from tests.train import test_distributed as single_host

ROOT = single_host.ROOT
# Measured here: both workers exit about 7 s after the link goes down (TF's heartbeat timeout).
STOP_WITHIN_SECONDS = 60
CONNECT_TIMEOUT = 15


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
  reason = SimulatedHosts.unavailable()
  if reason:
    pytest.skip(reason)
  with SimulatedHosts(2, tmp_path_factory.mktemp("hosts")) as simulated:
    yield simulated


class Cluster:
  """Worker i of a TF_CONFIG cluster runs on host i, with its run folder on host i's disk."""

  def __init__(self, hosts, name):
    self.hosts, self.name = hosts, name
    port = single_host._free_ports(1)[0]  # pylint: disable=protected-access
    self.cluster = {"worker": [f"{address}:{port}" for address in hosts.addresses]}

  def run_dir(self, i):
    return os.path.join(self.hosts.folder(i), self.name)

  def start(self, args, workers=(0, 1), stderr=subprocess.STDOUT):
    processes = []
    for i in workers:
      env = dict(os.environ, TF_CONFIG=json.dumps(
          {"cluster": self.cluster, "task": {"type": "worker", "index": i}}))
      processes.append(self.hosts.popen(
          i, [sys.executable, "-m", "tfinvconv.train", *args, "--strategy", "multiworker", "--run-dir",
              self.run_dir(i), "--connect-timeout", str(CONNECT_TIMEOUT)],
          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=stderr, text=True))
    return processes

  def run(self, args, returncode=0, timeout=600):
    processes = self.start(args)
    outputs = [p.communicate(timeout=timeout)[0] for p in processes]
    for process, output in zip(processes, outputs):
      assert process.returncode == returncode, output[-3000:]
    return outputs

  def ranks(self):
    """Each worker's rank file, from its own host's folder."""
    return [json.loads(open(os.path.join(self.run_dir(i), "ranks", f"rank{i}.json")).read())
            for i in range(2)]


def test_workers_on_two_hosts_agree_and_resume_from_the_chiefs_disk(hosts):
  args = [*single_host.TINY, "--batch-size", "16"]
  plain = Cluster(hosts, "plain")
  outputs = plain.run(args)
  assert "multiworker: 2 worker(s), 2 replica(s)" in outputs[0]
  single_host._assert_identical_and_learning(plain.ranks())  # pylint: disable=protected-access
  # Only the chief's host holds checkpoints (and metrics, samples).
  assert glob.glob(os.path.join(plain.run_dir(0), "checkpoints", "ckpt-*.index"))
  assert not os.path.exists(os.path.join(plain.run_dir(1), "checkpoints"))

  # SIGTERM to the worker on host 1 mid-epoch; on --resume only the chief can read the
  # checkpoint, and both end with the uninterrupted run's weights.
  resumed = Cluster(hosts, "resumed")
  processes = resumed.start(args)
  outputs = single_host._sigterm_mid_epoch(  # pylint: disable=protected-access
      processes, "multiworker: 2 worker(s)", processes[1])
  for process, output in zip(processes, outputs):
    assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert not glob.glob(os.path.join(resumed.run_dir(1), "checkpoints", "ckpt-*.index"))
  assert "resumed from" in resumed.run(args + ["--resume"])[0]
  single_host._assert_same_weights(resumed.ranks(), plain.ranks())  # pylint: disable=protected-access


def test_a_cut_link_ends_every_worker_in_bounded_time(hosts):
  cluster = Cluster(hosts, "cut")
  args = [*single_host.FAULT_RUN, "--batch-size", "16"]
  processes = cluster.start(args, stderr=subprocess.PIPE)
  single_host._wait_for_checkpoint(cluster.run_dir(0), processes)  # pylint: disable=protected-access
  hosts.cut(1)
  try:
    start = time.time()
    errors = [p.communicate(timeout=STOP_WITHIN_SECONDS + 60)[1] for p in processes]
    elapsed = time.time() - start
  finally:
    hosts.restore(1)
  assert elapsed < STOP_WITHIN_SECONDS, f"took {elapsed:.0f} s"
  for process, error in zip(processes, errors):
    assert process.returncode == 4, error[-3000:]
    assert "restart every worker with --resume" in error and "Traceback" not in error
  # Each names the other: the chief lost worker 1; worker 1 lost the chief, whose disk holds the
  # checkpoint (not worker 1's own folder).
  assert "error: lost contact with worker 1 (/job:worker/replica:0/task:1)" in errors[0]
  assert "error: lost contact with worker 0 (/job:worker/replica:0/task:0)" in errors[1], \
      errors[1][-1500:]
  assert "on the disk of worker 0" in errors[1]
  print(f"both workers stopped {elapsed:.1f} s after the link went down")
  assert "resumed from" in cluster.run(args + ["--resume"])[0]  # the link is back: it finishes
  ranks = cluster.ranks()
  assert ranks[1]["weights_sum"] == pytest.approx(ranks[0]["weights_sum"], rel=1e-9, abs=1e-9)


def test_a_host_that_does_not_answer_at_start_is_an_error_not_a_hang(hosts):
  cluster = Cluster(hosts, "unreachable")
  hosts.cut(1)
  try:
    start = time.time()
    process = cluster.start([*single_host.TINY], workers=(0,))[0]
    output = process.communicate(timeout=CONNECT_TIMEOUT + 120)[0]
    elapsed = time.time() - start
  finally:
    hosts.restore(1)
  assert process.returncode == 2, output[-3000:]
  assert (f"error: no answer from the host of worker 1 at {cluster.cluster['worker'][1]} within "
          f"{CONNECT_TIMEOUT} s (--connect-timeout); this is worker 0") in output
  assert "Traceback" not in output
  assert elapsed < CONNECT_TIMEOUT + 60, f"took {elapsed:.0f} s"


def test_the_lost_contact_message_names_the_other_worker():
  """Whatever TF's error names (the unhealthy task, this task, or none), a worker says which
  peer it lost and where the checkpoint is."""
  from tfinvconv.train.__main__ import lost_contact_message  # pylint: disable=g-import-not-at-top
  config = lambda i, n=2: json.dumps({"cluster": {"worker": [f"h{j}:1" for j in range(n)]},
                                      "task": {"type": "worker", "index": i}})
  unhealthy = "The following tasks are unhealthy (stopped sending heartbeats):\n" \
              "/job:worker/replica:0/task:1\n"
  chief = lost_contact_message(unhealthy, "/run", config(0))
  assert chief.startswith("lost contact with worker 1 (/job:worker/replica:0/task:1); the last "
                          "checkpoint in /run/checkpoints is intact")
  for text in (unhealthy, "Graph execution error:"):  # worker 1 lost the chief
    message = lost_contact_message(text, "/run", config(1))
    assert message.startswith("lost contact with worker 0 (/job:worker/replica:0/task:0); the "
                              "last checkpoint on the disk of worker 0"), message
  # Three workers, no task named: it cannot know which one, and says what TF said.
  assert "another worker (Graph execution error:)" in lost_contact_message(
      "Graph execution error:", "/run", config(2, 3))
