"""Masked causal convolutions and their exact inverses (Inverse-Flow), as TensorFlow ops."""

from tfinvconv.ops.causal_conv import CORNERS
from tfinvconv.ops.causal_conv import causal_conv2d
from tfinvconv.ops.causal_conv import kernel_mask
from tfinvconv.ops.inverse_causal_conv import IMPLEMENTATIONS
from tfinvconv.ops.inverse_causal_conv import inverse_causal_conv2d

__all__ = ["CORNERS", "IMPLEMENTATIONS", "causal_conv2d", "inverse_causal_conv2d", "kernel_mask"]
