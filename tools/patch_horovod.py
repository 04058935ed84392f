"""Patches Horovod 0.28.1's source tree so that it builds and runs with TensorFlow 2.21 and tf_keras.

Usage: python tools/patch_horovod.py build/horovod/horovod-0.28.1

Each patch names the exact text it replaces and how many times it must occur; anything else
(another Horovod version, a file already patched) stops the build with the file and the text,
instead of building a Horovod that half works.

1. Build: `horovod/tensorflow/xla_mpi_ops.cc` includes XLA headers TF >= 2.19 no longer ships;
   everything in it past the includes is GPU-only, so a CPU build skips the file.
2. `horovod.tensorflow.keras` imports `keras`, which is Keras 3 on TF >= 2.16: its callbacks are
   then Keras 3 callbacks (a tf_keras `fit` fails on them) and `MetricAverageCallback` calls
   `keras.backend.constant`, which Keras 3 lacks. Its modules import tf_keras instead, the Keras 2
   that TensorFlow Probability (and so tfinvconv) needs.
3. Gloo across hosts: the Gloo context of a process set (Horovod makes one for the global set in
   `hvd.init()`) builds its device from its own, empty interface name instead of the global
   context's `HOROVOD_GLOO_IFACE`, so it binds to whatever the host name resolves to. Where that
   is not the interface `horovodrun --network-interface` chose (a loopback address, another
   network), the ranks connect to addresses the others cannot reach and `hvd.init()` aborts
   (tests/train/test_multihost.py, horovodrun across simulated hosts). The process set takes the
   global context's interface.
"""

import os
import sys

KERAS_IMPORTS = [("from tensorflow import keras\n", "import tf_keras as keras\n", 1),
                 ("    from keras import backend as K\n",
                  "    from tf_keras import backend as K\n", 1)]

PATCHES = {
    "horovod/tensorflow/xla_mpi_ops.cc": [
        ("#if TENSORFLOW_VERSION >= 2006000000\n",
         "#if TENSORFLOW_VERSION >= 2006000000 && HAVE_GPU\n", 1)],
    "horovod/tensorflow/keras/__init__.py": KERAS_IMPORTS,
    "horovod/tensorflow/keras/callbacks.py": KERAS_IMPORTS,
    "horovod/common/gloo/gloo_context.cc": [
        ("  attr device_attr;\n  device_attr.iface = gloo_iface_;\n  device_attr.ai_family = AF_UNSPEC;\n"
         "  auto dev = CreateDevice(device_attr);\n\n  global_ctx = global_context.ctx;\n",
         "  gloo_iface_ = global_context.gloo_iface_;\n"
         "  attr device_attr;\n  device_attr.iface = gloo_iface_;\n  device_attr.ai_family = AF_UNSPEC;\n"
         "  auto dev = CreateDevice(device_attr);\n\n  global_ctx = global_context.ctx;\n", 1)],
    "horovod/tensorflow/keras/elastic.py": [
        ("import tensorflow as tf\n", "import tensorflow as tf\nimport tf_keras\n", 1),
        ("tf.keras.", "tf_keras.", 7)],
}


def patch(root):
  for relative, replacements in PATCHES.items():
    path = os.path.join(root, relative)
    with open(path) as f:
      text = f.read()
    for old, new, count in replacements:
      found = text.count(old)
      if found != count:
        raise SystemExit(f"patch_horovod: {relative} has {found} occurrence(s) of {old!r}, "
                         f"expected {count}: not the Horovod 0.28.1 source this patch is for")
      text = text.replace(old, new)
    with open(path, "w") as f:
      f.write(text)
    print(f"patched {relative}")


if __name__ == "__main__":
  if len(sys.argv) != 2:
    raise SystemExit(__doc__)
  patch(sys.argv[1])
