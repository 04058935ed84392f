"""tfinvconv: invertible convolutions for normalizing flows in TensorFlow."""

__version__ = "0.1.0"
