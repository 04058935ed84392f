"""tf.distribute's MirroredStrategy with Glow and model.fit (here two logical CPUs; on a GPU
host, MirroredStrategy() takes every GPU)."""

import tensorflow as tf
import tf_keras

from common import GLOBAL_BATCH, STEPS, digits, make_glow, report

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

dataset = tf.data.Dataset.from_tensor_slices(digits()).batch(GLOBAL_BATCH).repeat()
with strategy.scope():
  model = make_glow()
  model.compile(optimizer=tf_keras.optimizers.Adam(1e-3))
model.fit(dataset, steps_per_epoch=STEPS, epochs=1)  # initialises ActNorm from the first batch
for replica, value in enumerate(strategy.experimental_local_results(model.variables[0])):
  print(f"replica {replica}: first weight sum {float(tf.reduce_sum(value)):.6f}")
report(model, 0)
