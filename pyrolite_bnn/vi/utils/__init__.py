"""torch_blue's ``vi.utils``: errors and the normalisation-constant switch."""

from pyrolite_bnn.vi.utils.errors import NoVariablesError, UnsupportedDistributionError
from pyrolite_bnn.vi.utils.post_init_metaclass import PostInitCallMeta
from pyrolite_bnn.vi.utils.use_norm_constants import use_norm_constants

__all__ = [
    "NoVariablesError",
    "PostInitCallMeta",
    "UnsupportedDistributionError",
    "use_norm_constants",
]
