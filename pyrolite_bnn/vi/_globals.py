"""Process-wide switches of the torch_blue-compatible namespace."""

_USE_NORM_CONSTANTS = False
