"""Horovod's Keras recipe with Glow (horovodrun -np 2 -H localhost:2 --gloo python ...)."""

import tf_keras
import horovod.tensorflow.keras as hvd  # `make horovod`'s build: tf_keras, not Keras 3

from common import STEPS, make_glow, report, worker_batches

hvd.init()
dataset = worker_batches(hvd.rank(), hvd.size())

model = make_glow()
scaled_lr = 1e-3 * hvd.size()
optimizer = hvd.DistributedOptimizer(tf_keras.optimizers.Adam(scaled_lr))
model.compile(optimizer=optimizer)  # Glow's loss is its bits/dim

callbacks = [
    hvd.callbacks.BroadcastGlobalVariablesCallback(0),  # after the first batch: ActNorm too
    hvd.callbacks.MetricAverageCallback(),
    hvd.callbacks.LearningRateWarmupCallback(initial_lr=scaled_lr, warmup_epochs=1,
                                             steps_per_epoch=STEPS // 2, verbose=0),
]
model.fit(dataset, steps_per_epoch=STEPS // 2, epochs=2, callbacks=callbacks,
          verbose=1 if hvd.rank() == 0 else 0)
report(model, hvd.rank())
