"""Distributed training behind one small interface: none, Horovod, or tf.distribute.

Everything that differs between engines lives here: process rank and count, which GPU a
process uses, how gradients are averaged, how variables are broadcast after the data-dependent
initialisation, how metrics are averaged, and how the input is sharded.
"""

import contextlib
import os
import pickle

import numpy as np
import tensorflow as tf

from tfinvconv.train import cluster


class Engine:
  """One process, no distribution."""

  name = "single"
  elastic = False

  def __init__(self):
    self.rank, self.size, self.local_rank = 0, 1, 0

  @property
  def is_chief(self):
    return self.rank == 0

  @property
  def replicas(self):
    """Replicas that each take `batch_size` images per step (processes x local devices)."""
    return self.size

  def scope(self):
    return contextlib.nullcontext()

  def wrap_optimizer(self, optimizer):
    """The optimizer wrapped the way this engine averages gradients (nothing to do here)."""
    return optimizer

  @property
  def saves_on_every_worker(self):
    """True when every worker must take part in a checkpoint save (the chief's is kept)."""
    return False

  def broadcast_variables(self, variables):
    """Makes every worker hold rank 0's values (after the data-dependent init)."""

  def average(self, values):
    """Averages a dict of floats across workers (every worker must call it)."""
    return dict(values)

  def any(self, flag):
    """True on every worker when `flag` is true on any (e.g. a SIGTERM seen by one)."""
    return self.count(flag) > 0

  def count(self, flag):
    """On every worker: how many workers have `flag` true (every worker must call it)."""
    return int(bool(flag))

  def shard(self):
    """(number of shards, this worker's shard) for the input pipeline."""
    return 1, 0

  def input_batch(self, per_replica):
    """Images this process's input pipeline yields per step (one replica here, and one per
    Horovod process)."""
    return per_replica

  def broadcast_object(self, value):
    """Rank 0's value of a small picklable object, on every worker."""
    return value

  def distribute(self, dataset):
    return dataset

  @property
  def shared_init_batch(self):
    """True when every worker must initialise from the same batch (no broadcast available)."""
    return False


class HorovodEngine(Engine):
  """`horovodrun -np N python -m tfinvconv.train ...`: one process per GPU (or CPU), Gloo or MPI."""

  name = "horovod"

  def __init__(self):
    super().__init__()
    try:
      import horovod.tensorflow as hvd  # pylint: disable=g-import-not-at-top
    except ImportError as error:
      raise RuntimeError("Horovod is not installed in this environment: run `make horovod` "
                         f"(builds Horovod 0.28.1 for this TensorFlow) ({error})") from error
    import horovod.tensorflow.keras as hvd_keras  # pylint: disable=g-import-not-at-top
    self._hvd, self._hvd_keras = hvd, hvd_keras
    hvd.init()
    self.rank, self.size, self.local_rank = hvd.rank(), hvd.size(), hvd.local_rank()
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:  # one GPU per local rank
      tf.config.set_visible_devices(gpus[self.local_rank % len(gpus)], "GPU")
      tf.config.experimental.set_memory_growth(gpus[self.local_rank % len(gpus)], True)

  def wrap_optimizer(self, optimizer):
    """Horovod's Keras recipe: DistributedOptimizer averages in `compute_gradients`, which the
    guarded step calls (the patched horovod.tensorflow.keras of `make horovod`: tf_keras)."""
    return self._hvd_keras.DistributedOptimizer(optimizer)

  def broadcast_variables(self, variables):
    self._hvd.broadcast_variables(variables, root_rank=0)

  def average(self, values):
    keys = sorted(values)  # same order on every worker
    stacked = tf.constant([float(values[k]) for k in keys], tf.float64)
    averaged = self._hvd.allreduce(stacked, op=self._hvd.Average).numpy()
    return dict(zip(keys, averaged.tolist()))

  def count(self, flag):
    total = self._hvd.allreduce(tf.constant(1.0 if flag else 0.0), op=self._hvd.Sum)
    return int(round(float(total)))

  def shard(self):
    return self.size, self.rank

  def broadcast_object(self, value):
    return self._hvd.broadcast_object(value, root_rank=0)


class ElasticHorovodEngine(HorovodEngine):
  """`horovodrun --min-np ... --host-discovery-script ...` (HOROVOD_ELASTIC=1): workers come and
  go; rank and size change after each membership change (`refresh`). Collectives before the
  elastic loop would meet a joining worker's broadcast out of step, so the object and variable
  broadcasts of the set-up are left to the loop's first state sync (tfinvconv/train/elastic.py)."""

  name = "horovod-elastic"
  elastic = True

  @property
  def hvd(self):
    return self._hvd

  def refresh(self):
    """Rank and size after Horovod re-formed the job."""
    self.rank, self.size = self._hvd.rank(), self._hvd.size()
    self.local_rank = self._hvd.local_rank()

  def broadcast_variables(self, variables):
    """Deferred: the elastic state's sync broadcasts every variable of the run."""

  def broadcast_object(self, value):
    """Deferred: the elastic state carries rank 0's set-up decisions."""
    return value


class StrategyEngine(Engine):
  """What tf.distribute engines share: a strategy scope, Keras' own input distribution."""

  def __init__(self, strategy):
    super().__init__()
    self.strategy = strategy

  @property
  def replicas(self):
    return self.strategy.num_replicas_in_sync

  def scope(self):
    return self.strategy.scope()

  @property
  def shared_init_batch(self):
    return True

  def input_batch(self, per_replica):
    return per_replica * self.replicas  # Keras splits the global batch across replicas

  def distribute(self, dataset):
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return dataset.with_options(options)


class MirroredEngine(StrategyEngine):
  """--strategy mirrored: one process, every GPU of the host (or `cpu_replicas` logical CPUs).
  The strategy keeps its copies identical: nothing to broadcast, nothing to average."""

  name = "mirrored"

  def __init__(self, cpu_replicas=1):
    super().__init__(tf.distribute.MirroredStrategy(_logical_cpus(cpu_replicas)))


class MultiWorkerEngine(StrategyEngine):
  """--strategy multiworker: MultiWorkerMirroredStrategy, workers described by TF_CONFIG."""

  name = "multiworker"

  def __init__(self, connect_timeout=300):
    config = cluster.tf_config()
    if not cluster.tasks(config) or cluster.own_task(config) is None:
      raise ValueError("--strategy multiworker needs TF_CONFIG, a JSON object naming the "
                       "cluster's workers and this process's task (README: two workers on "
                       "127.0.0.1 ports)")
    cluster.wait_for_hosts(config, connect_timeout)
    # Blocks until every worker has joined TF's coordination service.
    super().__init__(tf.distribute.MultiWorkerMirroredStrategy())
    self.size = len(cluster.tasks(config))
    self.rank = cluster.rank(config)

  @property
  def saves_on_every_worker(self):
    return True

  def broadcast_variables(self, variables):
    """Every worker takes the chief's values: after a resume only the chief may have read the
    checkpoint (other workers may not see its files). The strategy keeps the copies identical
    from then on; one all-reduce carries them all."""
    values = [np.asarray(v.numpy()) for v in variables]
    flat = np.concatenate([np.asarray(v, np.float64).ravel() for v in values] or [np.zeros(0)])
    if not self.is_chief:
      flat = np.zeros_like(flat)
    flat = self._sum(flat, first_replica_only=True)  # float64: float32 and int64 steps exact
    offset = 0
    for variable, value in zip(variables, values):
      variable.assign(flat[offset:offset + value.size].reshape(value.shape).astype(value.dtype))
      offset += value.size

  def count(self, flag):
    # A collective: each replica of a worker adds the worker's flag.
    total = float(self._sum(np.array(1.0 if flag else 0.0)))
    return int(round(total * self.size / self.replicas))

  def broadcast_object(self, value):
    """Rank 0's value on every worker. tf.distribute has no object broadcast, so the pickled
    bytes travel as an all-reduce sum to which only the first replica of the chief contributes
    (its length first, so every worker knows the buffer size)."""
    payload = np.frombuffer(pickle.dumps(value), np.uint8) if self.is_chief else np.zeros(0)
    length = int(self._sum(np.array([payload.size], np.float64), first_replica_only=True)[0])
    buffer = np.zeros(length, np.float64)
    buffer[:payload.size] = payload
    data = self._sum(buffer, first_replica_only=True)
    return pickle.loads(np.rint(data).astype(np.uint8).tobytes())

  def _sum(self, array, first_replica_only=False):
    """All-reduce sum of `array` over every replica of every worker (a collective: every worker
    calls it), or, with first_replica_only, just the value of global replica 0 (the chief's)."""
    value = tf.constant(array)

    def contribute():
      if not first_replica_only:
        return tf.identity(value)
      first = tf.equal(tf.distribute.get_replica_context().replica_id_in_sync_group, 0)
      return tf.where(first, value, tf.zeros_like(value))

    total = self.strategy.reduce(tf.distribute.ReduceOp.SUM, self.strategy.run(contribute),
                                 axis=None)
    return total.numpy()


def _logical_cpus(count):
  """None (the strategy's own choice: every GPU) or `count` logical CPU devices, so that the
  multi-replica paths (all-reduce, per-replica batches) run on a machine without GPUs."""
  if count <= 1:
    return None
  if tf.config.list_physical_devices("GPU"):
    raise ValueError("--cpu-replicas is for machines without GPUs (mirrored uses every GPU)")
  try:
    tf.config.set_logical_device_configuration(
        tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration() for _ in range(count)])
  except RuntimeError as error:  # devices already initialised in this process
    raise ValueError(f"--cpu-replicas needs a fresh process: {error}") from error
  return [f"/cpu:{i}" for i in range(count)]


# What Horovod's ops raise once its background loop has stopped (a rank ended, or Gloo timed out
# on a peer it cannot reach).
HOROVOD_SHUT_DOWN = "Horovod has been shut down"


def horovod_lost_peer(error):
  """Whether a TF error is Horovod losing a peer: its background loop stopped, or the op's own
  Gloo transfer failed (timed out on a host it cannot reach, or the peer closed)."""
  text = str(error)
  return HOROVOD_SHUT_DOWN in text or "gloo/transport/" in text


def horovod_lost_message(run_folder):
  """What rank 0 says when Horovod lost a peer mid-run."""
  return ("Horovod shut down mid-run: another rank ended or this one can no longer reach it "
          "(Gloo gives up after HOROVOD_GLOO_TIMEOUT_SECONDS, 30 s by default; horovodrun names "
          "the rank that ended). The last checkpoint, on the disk of rank 0, which writes it, is "
          f"intact ({os.path.join(run_folder, 'checkpoints')} there): restart every rank with "
          "--resume")


def launched_by_horovod():
  return any(name in os.environ for name in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK",
                                             "PMI_RANK"))


# --strategy: "" is Horovod under horovodrun (or mpirun), else one process.
STRATEGIES = ("", "mirrored", "multiworker")


def make_engine(strategy=None, cpu_replicas=1, connect_timeout=300):
  """Horovod when launched by horovodrun/mpirun, tf.distribute when asked, else one process."""
  if strategy == "mirrored":
    return MirroredEngine(cpu_replicas)
  if strategy == "multiworker":
    return MultiWorkerEngine(connect_timeout)
  if strategy:
    raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES[1:])}")
  if launched_by_horovod():
    return ElasticHorovodEngine() if os.environ.get("HOROVOD_ELASTIC") == "1" else HorovodEngine()
  return Engine()


def seed_for(engine, seed):
  """Per-worker seed for data order and noise; weights come from rank 0 anyway."""
  return (int(seed) * 1000 + engine.rank) % 2 ** 32  # any valid seed, no uint32 overflow
