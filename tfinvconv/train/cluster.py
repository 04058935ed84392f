"""A TF_CONFIG cluster (--strategy multiworker): its tasks, its leader, whether its hosts answer,
and what a worker says when it loses contact with another."""

import json
import os
import re
import socket
import time

JOBS = ("chief", "worker")  # the jobs that train; a TF_CONFIG may list others


def tf_config(text=None):
  """TF_CONFIG (or the text given) as a dict; {} outside a TF_CONFIG cluster."""
  try:
    config = json.loads(text if text is not None else os.environ.get("TF_CONFIG", ""))
  except ValueError:
    return {}
  return config if isinstance(config, dict) else {}


def own_task(config):
  """(job, index) of this process, or None when TF_CONFIG names no task."""
  task = config.get("task", {})
  try:
    return task["type"], int(task["index"])
  except (KeyError, TypeError, ValueError):
    return None


def tasks(config):
  """Every (job, index) that trains, chief first: the order of the workers' ranks."""
  cluster = config.get("cluster", {})
  return [(job, i) for job in JOBS for i in range(len(cluster.get(job, [])))]


def leader(config):
  """The task that runs TF's coordination service and writes checkpoints: the chief if the
  cluster has one, else worker 0."""
  return ("chief", 0) if ("chief", 0) in tasks(config) else ("worker", 0)


def rank(config):
  """This task's rank among the training tasks (the leader is 0)."""
  task = own_task(config) or ("worker", 0)
  return tasks(config).index(task) if task in tasks(config) else task[1]


class ClusterUnreachableError(ValueError):
  """A worker's host in TF_CONFIG does not answer: a setup error the user can fix."""


def wait_for_hosts(config, seconds):
  """Returns once every other worker's host answers at its TF_CONFIG address (a refused
  connection counts: the host is up, its worker may not have started yet); raises
  ClusterUnreachableError naming the silent ones after `seconds`. TF itself would wait for an
  hour with no word (its register timeout did not bound that wait in TF 2.21, and it holds the
  GIL, so no Python timer can interrupt it). A worker that never starts on a live host is not
  caught here: TF still waits for it."""
  cluster = config.get("cluster", {})
  task = config.get("task", {})
  own = (task.get("type"), task.get("index", 0))
  pending = {(job, i): address for job in JOBS
             for i, address in enumerate(cluster.get(job, [])) if (job, i) != own}
  deadline = time.monotonic() + seconds
  while pending:
    pending = {peer: address for peer, address in pending.items() if not _answers(address)}
    if pending and time.monotonic() > deadline:
      silent = "; ".join(f"{job} {i} at {address}" for (job, i), address in pending.items())
      raise ClusterUnreachableError(
          f"no answer from the host of {silent} within {seconds} s (--connect-timeout); this is "
          f"{own[0]} {own[1]}. Check that each TF_CONFIG address belongs to its host, that the "
          "hosts can reach each other, and that no firewall drops the ports")
    if pending:
      time.sleep(0.5)


def _answers(address, timeout=1.0):
  """Whether the host at host:port answers (accepts or refuses the connection)."""
  host, port = address.rsplit(":", 1)
  try:
    with socket.create_connection((host, int(port)), timeout=timeout):
      return True
  except ConnectionRefusedError:
    return True
  except OSError:
    return False


def lost_contact_message(error, run_folder, text=None):
  """What a worker says when a collective or the coordination service fails: which task was
  lost, where the last checkpoint is, and to restart every worker with --resume. `text`: a
  TF_CONFIG to use instead of the environment's."""
  config = tf_config(text)
  task, head = own_task(config), leader(config)
  lost = _lost_task(str(error))
  others = [t for t in tasks(config) if t != task]
  if task is not None and (lost == task or not isinstance(lost, tuple)):
    # TF's text names this task when it lost the coordination leader, or no task at all.
    lost = others[0] if len(others) == 1 else head if lost == task else lost
  if task is None or task == head:
    where = f"in {os.path.join(run_folder, 'checkpoints')}"
  else:  # only the leader writes checkpoints: on another host they are not on this disk
    where = f"on the disk of {_describe(head)}, which writes them,"
  return (f"lost contact with {_describe(lost) if isinstance(lost, tuple) else lost}; the last "
          f"checkpoint {where} is intact: restart every worker with --resume")


def _describe(task):
  return f"{task[0]} {task[1]} (/job:{task[0]}/replica:0/task:{task[1]})"


def _lost_task(text):
  """(job, index) of the task TF's error text lists as unhealthy (or the first it names), or
  what the error says."""
  unhealthy = text.find("unhealthy")
  task = r"/job:(\w+)/replica:\d+/task:(\d+)"
  match = (re.search(task, text[unhealthy:]) if unhealthy >= 0 else None) or re.search(task, text)
  if match:
    return match.group(1), int(match.group(2))
  return "another worker (" + (text.strip().splitlines() or ["no details"])[0][:200] + ")"
