"""Flow models built from tfinvconv's bijectors."""

from tfinvconv.models.glow import COUPLINGS
from tfinvconv.models.glow import Glow
from tfinvconv.models.glow import MIXERS

__all__ = ["COUPLINGS", "Glow", "MIXERS"]
