"""Real multi-process training runs on one host: MirroredStrategy over two CPU replicas (learns,
stops on SIGTERM from outside, resumes to the uninterrupted run's weights), and a worker killed
mid-run under horovodrun with Gloo and under MultiWorkerMirroredStrategy on 127.0.0.1 ports (the
others stop in bounded time, --resume finishes, the ranks agree). The stop and resume of
horovodrun and MultiWorkerMirrored runs are tests/train/test_multihost.py's (two simulated
hosts, each worker with its own disk); the helpers here are shared with it."""

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow  # trainer processes, horovodrun

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = ["--depth", "1", "--hidden-channels", "8", "--num-samples", "4", "--epochs", "3",
        "--steps-per-epoch", "8", "--batch-size", "32"]


def _ranks(run_dir, count):
  ranks = [json.loads(open(os.path.join(run_dir, "ranks", f"rank{r}.json")).read())
           for r in range(count)]
  return ranks


def _assert_identical_and_learning(ranks):
  first = ranks[0]
  for other in ranks[1:]:
    assert other["weights_sum"] == pytest.approx(first["weights_sum"], rel=1e-9, abs=1e-9)
    assert other["weights_sum_of_squares"] == pytest.approx(first["weights_sum_of_squares"],
                                                           rel=1e-9)
  for rank in ranks:
    assert rank["last_epoch_bits_per_dim"] < rank["first_epoch_bits_per_dim"], rank


def _assert_same_weights(ranks, reference):
  for rank, want in zip(ranks, reference):
    assert rank["weights_sum"] == pytest.approx(want["weights_sum"], rel=1e-9, abs=1e-9)
    assert rank["weights_sum_of_squares"] == pytest.approx(want["weights_sum_of_squares"],
                                                           rel=1e-9)


def _wait_for_checkpoint(run_dir, processes, timeout=300):
  start = time.time()
  while time.time() - start < timeout:
    if glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.index")):
      return
    assert all(p.poll() is None for p in processes), "a process ended before its first checkpoint"
    time.sleep(0.2)
  raise AssertionError("no checkpoint appeared")


def _sigterm_mid_epoch(processes, chief_line, signalled, timeout=300):
  """Sends SIGTERM to one worker (`signalled`, a process or a callable giving it) as soon as the
  chief (processes[0]) has printed `chief_line`, i.e. its model is built and every worker has its
  signal handler: the stop then lands within the first of 8 steps of the epoch, well before its
  end. Returns every process's whole output."""
  head = []
  for line in processes[0].stdout:
    head.append(line)
    if chief_line in line:
      break
  else:
    raise AssertionError("the chief ended before training: " + "".join(head)[-3000:])
  (signalled() if callable(signalled) else signalled).send_signal(signal.SIGTERM)
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  return ["".join(head) + outputs[0]] + outputs[1:]


def _stopped_mid_epoch(run_dir, steps_per_epoch=8):
  """Whether the run's last checkpoint (there must be one) is from within an epoch."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  latest = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
  assert latest is not None, f"no checkpoint in {run_dir}"
  step = int(latest.rsplit("-", 1)[1])
  return step % steps_per_epoch != 0


def _rank_process(launcher, rank):
  import psutil  # pylint: disable=g-import-not-at-top  # installed by `make horovod`
  found = [p for p in psutil.Process(launcher.pid).children(recursive=True)
           if "tfinvconv.train" in p.cmdline() and p.environ().get("HOROVOD_RANK") == str(rank)]
  assert found, f"rank {rank} not found"
  return found[-1]


def _free_ports(n):
  sockets = [socket.socket() for _ in range(n)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _multiworker_environments():
  ports = _free_ports(2)
  cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
  return [dict(os.environ, TF_CONFIG=json.dumps(
      {"cluster": cluster, "task": {"type": "worker", "index": index}})) for index in range(2)]


def _workers(environments, args, returncode=0, timeout=600):
  """Runs `python -m tfinvconv.train args --strategy multiworker` once per environment; their outputs."""
  processes = [subprocess.Popen(
      [sys.executable, "-m", "tfinvconv.train", *args, "--strategy", "multiworker"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for env in environments]
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  for process, output in zip(processes, outputs):
    assert process.returncode == returncode, output[-3000:]
  return outputs


def test_mirrored_strategy_two_cpu_replicas_learn_and_resume(tmp_path):
  """MirroredStrategy over two logical CPU devices, with --backprop reversible (stored runs
  mirrored in the recipes and across hosts): the all-reduce paths really run. SIGTERM
  from outside the command line mid-epoch: it saves a checkpoint there (the periodic ones are
  every 100 steps) and exits with 128+15, and --resume ends with the uninterrupted run's
  weights."""
  def command(run_dir, *extra):
    return [sys.executable, "-m", "tfinvconv.train", *TINY, "--strategy", "mirrored", "--cpu-replicas",
            "2", "--backprop", "reversible", "--run-dir", run_dir, *extra]

  def mirrored(run_dir, *extra):
    result = subprocess.run(command(run_dir, *extra), cwd=ROOT, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result

  run_dir = str(tmp_path / "mirrored")
  assert "mirrored: 1 worker(s), 2 replica(s)" in mirrored(run_dir).stdout
  _assert_identical_and_learning(_ranks(run_dir, 1))
  assert os.path.exists(os.path.join(run_dir, "metrics.json"))
  resumed_dir = str(tmp_path / "mirrored_resumed")
  process = subprocess.Popen(command(resumed_dir), cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  output = _sigterm_mid_epoch([process], "mirrored: 1 worker(s)", process)[0]
  assert process.returncode == 128 + signal.SIGTERM, output[-3000:]
  assert "checkpoint saved" in output, output[-3000:]
  assert _stopped_mid_epoch(resumed_dir), output[-3000:]
  assert "resumed from" in mirrored(resumed_dir, "--resume").stdout
  _assert_same_weights(_ranks(resumed_dir, 1), _ranks(run_dir, 1))


# Fault injection: one process SIGKILLed mid-run. The others stop within a bounded time with a
# message naming the lost one, the last checkpoint stays valid, and --resume finishes the run.
FAULT_RUN = ["--depth", "1", "--hidden-channels", "8", "--num-samples", "4", "--epochs", "4",
             "--steps-per-epoch", "8", "--checkpoint-every", "2"]
STOP_WITHIN_SECONDS = 60


def _assert_ranks_agree(run_dir, count):
  ranks = _ranks(run_dir, count)
  for other in ranks[1:]:
    assert other["weights_sum"] == pytest.approx(ranks[0]["weights_sum"], rel=1e-9, abs=1e-9)


def test_multiworker_worker_killed_mid_run(tmp_path):
  environments = _multiworker_environments()
  run_dir = str(tmp_path / "mwms")
  args = [*FAULT_RUN, "--batch-size", "16", "--run-dir", run_dir]
  processes = [subprocess.Popen(
      [sys.executable, "-m", "tfinvconv.train", *args, "--strategy", "multiworker"], cwd=ROOT, env=env,
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for env in environments]
  _wait_for_checkpoint(run_dir, processes)
  processes[1].send_signal(signal.SIGKILL)
  start = time.time()
  _, stderr = processes[0].communicate(timeout=STOP_WITHIN_SECONDS + 60)
  processes[1].communicate()
  assert time.time() - start < STOP_WITHIN_SECONDS
  assert processes[0].returncode == 4, stderr[-3000:]
  assert "error: lost contact with worker 1 (/job:worker/replica:0/task:1)" in stderr
  assert "restart every worker with --resume" in stderr and "Traceback" not in stderr
  assert "resumed from" in _workers(environments, args + ["--resume"])[0]  # the run finishes
  _assert_ranks_agree(run_dir, 2)


def test_horovod_rank_killed_mid_run(tmp_path):
  pytest.importorskip("psutil")  # installed by `make horovod`
  horovodrun = os.path.join(os.path.dirname(sys.executable), "horovodrun")
  run_dir = str(tmp_path / "hvd")
  command = lambda *extra: [horovodrun, "-np", "2", "-H", "localhost:2", "--gloo",
                            sys.executable, "-m", "tfinvconv.train", *FAULT_RUN, "--batch-size", "32",
                            "--run-dir", run_dir, *extra]
  launcher = subprocess.Popen(command(), cwd=ROOT, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True)
  _wait_for_checkpoint(run_dir, [launcher])
  _rank_process(launcher, 1).kill()
  start = time.time()
  output = launcher.communicate(timeout=STOP_WITHIN_SECONDS + 60)[0]
  assert time.time() - start < STOP_WITHIN_SECONDS
  assert launcher.returncode != 0
  assert "Process name: 1" in output and "Exit code: 137" in output  # horovodrun names it
  result = subprocess.run(command("--resume"), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
  assert result.returncode == 0 and "resumed from" in result.stdout, result.stdout[-3000:]
  _assert_ranks_agree(run_dir, 2)
