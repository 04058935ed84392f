"""Horovod's TensorFlow 2 recipe with Glow: a custom loop with DistributedGradientTape."""

import tensorflow as tf
import tf_keras
import horovod.tensorflow as hvd

from tfinvconv.models.horovod_agreement import check_gradients_agree
from common import STEPS, make_glow, report, worker_batches

hvd.init()
dataset = worker_batches(hvd.rank(), hvd.size())

model = make_glow()
optimizer = tf_keras.optimizers.Adam(1e-3 * hvd.size())
batches = iter(dataset)
model.initialize(next(batches))  # ActNorm's data-dependent init, then rank 0's values for all
hvd.broadcast_variables(model.variables, root_rank=0)
optimizer.build(model.trainable_variables)
hvd.broadcast_variables(optimizer.variables, root_rank=0)


@tf.function
def training_step(images, step):
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(model.bits_per_dim(images, seed=model.training_seed(step)))
  tape = hvd.DistributedGradientTape(tape)
  gradients = tape.gradient(loss, model.trainable_variables)
  with tf.control_dependencies([check_gradients_agree(gradients)]):  # fails if not averaged
    optimizer.apply_gradients(zip(gradients, model.trainable_variables))
  return loss


for step in range(STEPS):
  loss = training_step(next(batches), tf.constant(step, tf.int64))
  if hvd.rank() == 0:
    print(f"step {step}: {float(loss):.4f} bits/dim")
report(model, hvd.rank())
