"""tf.distribute's MultiWorkerMirroredStrategy with Glow and model.fit: run one copy per worker,
each with TF_CONFIG naming the cluster and its own index."""

import json
import os

import tensorflow as tf
import tf_keras

from common import GLOBAL_BATCH, STEPS, digits, make_glow, report

strategy = tf.distribute.MultiWorkerMirroredStrategy()
# Every worker builds the same dataset; fit shards it across the workers.
dataset = tf.data.Dataset.from_tensor_slices(digits()).batch(GLOBAL_BATCH).repeat()
with strategy.scope():
  model = make_glow()
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
model.fit(dataset, steps_per_epoch=STEPS, epochs=1)  # initialises ActNorm from the first batch
report(model, json.loads(os.environ["TF_CONFIG"])["task"]["index"])
