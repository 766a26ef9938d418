"""torch_blue's ``vi.utils``: errors and the normalisation-constant switch.

Its submodules ``init``, ``common_types``, ``vi_return`` and ``convert`` are
attributes, as in torch_blue (``vi.utils.init.fixed_``).
"""

from pyrolite_bnn.vi.utils import common_types, convert, init, vi_return
from pyrolite_bnn.vi.utils.errors import (
    NoRoleError,
    NoVariablesError,
    UnsupportedDistributionError,
)
from pyrolite_bnn.vi.utils.post_init_metaclass import PostInitCallMeta
from pyrolite_bnn.vi.utils.use_norm_constants import use_norm_constants

__all__ = [
    "NoRoleError",
    "NoVariablesError",
    "PostInitCallMeta",
    "UnsupportedDistributionError",
    "common_types",
    "convert",
    "init",
    "use_norm_constants",
    "vi_return",
]
