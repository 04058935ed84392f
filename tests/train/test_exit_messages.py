"""What a worker says when it loses a peer, read from the error text alone (no cluster needed):
which worker it lost under MultiWorkerMirrored, and whether a Horovod op failed because a peer is
gone. The real faults are tests/train/test_multihost.py's and test_distributed.py's."""

import json

from tfinvconv.train.cluster import lost_contact_message
from tfinvconv.train.distributed import horovod_lost_peer


def _tf_config(index, workers=2):
  return json.dumps({"cluster": {"worker": [f"h{j}:1" for j in range(workers)]},
                     "task": {"type": "worker", "index": index}})


def test_the_lost_contact_message_names_the_other_worker():
  """Whatever TF's error names (the unhealthy task, this task, or none), a worker says which
  peer it lost and where the checkpoint is."""
  unhealthy = "The following tasks are unhealthy (stopped sending heartbeats):\n" \
              "/job:worker/replica:0/task:1\n"
  chief = lost_contact_message(unhealthy, "/run", _tf_config(0))
  assert chief.startswith("lost contact with worker 1 (/job:worker/replica:0/task:1); the last "
                          "checkpoint in /run/checkpoints is intact")
  for text in (unhealthy, "Graph execution error:"):  # worker 1 lost the chief
    message = lost_contact_message(text, "/run", _tf_config(1))
    assert message.startswith("lost contact with worker 0 (/job:worker/replica:0/task:0); the "
                              "last checkpoint on the disk of worker 0"), message
  # Three workers, no task named: it cannot know which one, and says what TF said.
  assert "another worker (Graph execution error:)" in lost_contact_message(
      "Graph execution error:", "/run", _tf_config(2, 3))


def test_a_lost_horovod_peer_is_recognised_whichever_op_notices_it():
  """Rank 0 says "Horovod shut down mid-run" (and an elastic run rolls back) whether the op that
  hit the lost peer reports Horovod's shutdown or its own Gloo timeout (seen when the weight
  check's all-reduce was the op waiting); other errors stay errors."""
  gloo = ("[/build/horovod/third_party/compatible17_gloo/gloo/transport/tcp/unbound_buffer.cc:81] "
          "Timed out waiting 30000ms for recv operation to complete\n\t [[{{node cond/"
          "tfinvconv_weight_check}}]]")
  shut_down = "UNKNOWN: Horovod has been shut down. This was caused by an exception on one rank"
  assert horovod_lost_peer(gloo) and horovod_lost_peer(shut_down)
  assert not horovod_lost_peer("Input to reshape is a tensor with 12 values")
