"""TFP bijectors for invertible-convolution flows on [height, width, channels] events.

Convention (as `tfd.TransformedDistribution` uses them): `forward` = latent -> data (sampling),
`inverse` = data -> latent (density evaluation and training).
"""

from tfinvconv.bijectors.actnorm import ActNorm
from tfinvconv.bijectors.affine_coupling import AffineCoupling
from tfinvconv.bijectors.conv1x1 import Conv1x1
from tfinvconv.bijectors.conv_nxn import ConvNxN
from tfinvconv.bijectors.emerging_conv import EmergingConv
from tfinvconv.bijectors.inverse_conv import InverseConv
from tfinvconv.bijectors.invertible_shift import InvertibleShift
from tfinvconv.bijectors.squeeze import Squeeze

__all__ = ["ActNorm", "AffineCoupling", "Conv1x1", "ConvNxN", "EmergingConv", "InverseConv",
           "InvertibleShift", "Squeeze"]
