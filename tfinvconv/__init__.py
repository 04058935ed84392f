"""tfinvconv: invertible convolutions for normalizing flows in TensorFlow.

`import tfinvconv` gives `tfinvconv.ops`, `tfinvconv.bijectors` and `tfinvconv.models`, and
registers the compiled op (so SavedModels that use it load in any process).
"""

from tfinvconv import bijectors
from tfinvconv import models
from tfinvconv import ops

__version__ = "0.1.0"
__all__ = ["bijectors", "models", "ops"]
