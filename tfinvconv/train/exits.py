"""How a run ends: its exit codes, and the immediate exit of a process that cannot stop cleanly."""

import os
import sys

EXIT_USAGE = 2         # bad flags, data or configuration: a one-line error
EXIT_NONFINITE = 3     # --max-nonfinite consecutive non-finite steps
EXIT_LOST_WORKER = 4   # a peer was lost; the last checkpoint is intact
EXIT_REBUILD = 5       # --backprop reversible rebuilt a step's input too far from the true one
# 128 + N: stopped by signal N (a checkpoint was saved unless it was the second signal).


def exit_now(message, status, flush_stdout=True):
  """Says `message` on stderr and exits with `status` at once, without interpreter teardown
  (broken collectives can hang it or print noise). flush_stdout=False inside a signal handler:
  flushing stdout there can raise a reentrant-call error."""
  if flush_stdout:
    sys.stdout.flush()
  sys.stderr.write(message + "\n")
  sys.stderr.flush()
  os._exit(status)  # pylint: disable=protected-access
