"""Flow models built from tfinvconv's bijectors."""

from tfinvconv.models.glow import BACKPROPS
from tfinvconv.models.glow import COUPLINGS
from tfinvconv.models.glow import Glow
from tfinvconv.models.glow import MIXERS
from tfinvconv.models.export import export_saved_model

__all__ = ["BACKPROPS", "COUPLINGS", "Glow", "MIXERS", "export_saved_model"]
