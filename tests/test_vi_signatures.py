"""``pyrolite_bnn.vi`` takes torch_blue's signatures: a guard over all its classes.

torch_blue is not a dependency, so its signatures are recorded here, read from
torch_blue 1.1.0's source (``torch_blue/vi``; the dev branch's are the same
for these classes). A positional argument bound to another parameter than in
torch_blue runs silently wrong (``VIMultiheadAttention(q, k, v, mask)`` took
the mask as key padding mask), so every parameter must have torch_blue's
name, kind, position and default. Allowed: a default that torch_blue builds
as an object (``MeanFieldNormal()``, ``ReLU()``) is ``None`` here (built when
``None``: no instances as defaults), and extra keyword-only parameters with
defaults at the end (``estimator=``, ``kl=``, ``need_weights=``), which no
torch_blue call can reach. The few known differences, each one that a
torch_blue call can only meet as a ``TypeError``, are listed in ``KNOWN``.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from pyrolite_bnn import vi
from pyrolite_bnn.vi import distributions, utils

# torch_blue's convolutions of every dimension take one signature.
_CONV_INIT = (
    "in_channels",
    "out_channels",
    "kernel_size",
    "stride=1",
    "padding=0",
    "dilation=1",
    "groups=1",
    "bias=True",
    "padding_mode='zeros'",
    "variational_distribution=MeanFieldNormal()",
    "prior=MeanFieldNormal()",
    "rescale_prior=False",
    "kaiming_initialization=True",
    "prior_initialization=False",
    "return_log_probs=True",
    "device=None",
    "dtype=None",
)

# (namespace, class, method) -> torch_blue 1.1.0's parameters after ``self``:
# "name", "name=default", "*name" (var-positional), "**name", "kw:name".
TORCH_BLUE: dict[tuple[str, str, str], tuple[str, ...]] = {
    ("vi", "AnalyticalKullbackLeiblerLoss", "__init__"): (
        "model",
        "predictive_distribution",
        "dataset_size=None",
        "divergence_type=None",
        "heat=1.0",
        "track=False",
    ),
    ("vi", "AnalyticalKullbackLeiblerLoss", "forward"): (
        "model_output",
        "target",
        "dataset_size=None",
    ),
    ("vi", "KullbackLeiblerLoss", "__init__"): (
        "predictive_distribution",
        "dataset_size=None",
        "heat=1.0",
        "track=False",
    ),
    ("vi", "KullbackLeiblerLoss", "forward"): (
        "model_output",
        "target",
        "dataset_size=None",
    ),
    ("vi", "KullbackLeiblerModule", "forward"): ("*input_",),
    ("vi", "NonBayesianDivergence", "forward"): (),
    ("vi", "NormalNormalDivergence", "forward"): (
        "prior_log_std",
        "variational_mean",
        "variational_log_std",
    ),
    ("vi", "UniformNormalDivergence", "forward"): (
        "variational_mean",
        "variational_log_std",
    ),
    ("vi", "VIConv1d", "__init__"): _CONV_INIT,
    ("vi", "VIConv1d", "forward"): ("input_",),
    ("vi", "VIConv2d", "__init__"): _CONV_INIT,
    ("vi", "VIConv2d", "forward"): ("input_",),
    ("vi", "VIConv3d", "__init__"): _CONV_INIT,
    ("vi", "VIConv3d", "forward"): ("input_",),
    ("vi", "VILinear", "__init__"): (
        "in_features",
        "out_features",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "bias=True",
        "rescale_prior=False",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
    ),
    ("vi", "VILinear", "forward"): ("input_",),
    ("vi", "VIModule", "__init__"): (
        "variable_shapes=None",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "rescale_prior=False",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
        "convert_overwrite=False",
    ),
    ("vi", "VIModule", "forward"): ("*input_",),
    ("vi", "VIModule", "gather_log_probs"): (),
    ("vi", "VIModule", "reset_log_probs"): (),
    ("vi", "VIMultiheadAttention", "__init__"): (
        "embed_dim",
        "num_heads",
        "bias=True",
        "add_bias_kv=False",
        "add_zero_attn=False",
        "kdim=None",
        "vdim=None",
        "batch_first=True",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "rescale_prior=True",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
    ),
    ("vi", "VIMultiheadAttention", "forward"): (
        "query",
        "key",
        "value",
        "attn_mask=None",
        "key_padding_mask=None",
        "average_attn_weights=True",
        "is_causal=False",
    ),
    ("vi", "VIResidualConnection", "__init__"): ("*args",),
    ("vi", "VIResidualConnection", "forward"): ("input_",),
    ("vi", "VIReturn", "__init__"): ("data", "log_probs"),
    ("vi", "VISequential", "__init__"): ("*args",),
    ("vi", "VISequential", "forward"): ("input_",),
    ("vi", "VITransformer", "__init__"): (
        "d_model=32",
        "nhead=1",
        "num_encoder_layers=1",
        "num_decoder_layers=1",
        "dim_feedforward=256",
        "activation=ReLU()",
        "custom_encoder=None",
        "custom_decoder=None",
        "layer_norm_eps=1e-05",
        "batch_first=False",
        "norm_first=False",
        "bias=True",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "rescale_prior=True",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
    ),
    ("vi", "VITransformer", "forward"): (
        "src",
        "tgt",
        "src_mask=None",
        "tgt_mask=None",
        "memory_mask=None",
        "src_key_padding_mask=None",
        "tgt_key_padding_mask=None",
        "memory_key_padding_mask=None",
        "src_is_causal=None",
        "tgt_is_causal=None",
        "memory_is_causal=False",
    ),
    ("vi", "VITransformerDecoder", "__init__"): (
        "decoder_layer",
        "num_layers",
        "norm=None",
        "return_log_probs=True",
    ),
    ("vi", "VITransformerDecoder", "forward"): (
        "tgt",
        "memory",
        "tgt_mask=None",
        "memory_mask=None",
        "tgt_key_padding_mask=None",
        "memory_key_padding_mask=None",
        "tgt_is_causal=None",
        "memory_is_causal=False",
    ),
    ("vi", "VITransformerDecoderLayer", "__init__"): (
        "d_model",
        "nhead",
        "dim_feedforward=512",
        "activation=ReLU()",
        "layer_norm_eps=1e-05",
        "norm_first=False",
        "batch_first=True",
        "bias=True",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "rescale_prior=True",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
    ),
    ("vi", "VITransformerDecoderLayer", "forward"): (
        "tgt",
        "memory",
        "tgt_mask=None",
        "memory_mask=None",
        "tgt_key_padding_mask=None",
        "memory_key_padding_mask=None",
        "tgt_is_causal=False",
        "memory_is_causal=False",
    ),
    ("vi", "VITransformerEncoder", "__init__"): (
        "encoder_layer",
        "num_layers",
        "norm=None",
        "return_log_probs=True",
    ),
    ("vi", "VITransformerEncoder", "forward"): (
        "src",
        "mask=None",
        "src_key_padding_mask=None",
        "is_causal=None",
    ),
    ("vi", "VITransformerEncoderLayer", "__init__"): (
        "d_model",
        "nhead",
        "dim_feedforward=512",
        "activation=ReLU()",
        "layer_norm_eps=1e-05",
        "batch_first=True",
        "norm_first=False",
        "bias=True",
        "variational_distribution=MeanFieldNormal()",
        "prior=MeanFieldNormal()",
        "rescale_prior=True",
        "kaiming_initialization=True",
        "prior_initialization=False",
        "return_log_probs=True",
        "device=None",
        "dtype=None",
    ),
    ("vi", "VITransformerEncoderLayer", "forward"): (
        "src",
        "src_mask=None",
        "src_key_padding_mask=None",
        "is_causal=False",
    ),
    ("vi.distributions", "BasicQuietPrior", "__init__"): (
        "std_ratio=1.0",
        "mean_mean=0.0",
        "mean_std=1.0",
        "eps=1e-10",
    ),
    ("vi.distributions", "Categorical", "__init__"): (
        "input_type='logits'",
        "eps=1e-05",
    ),
    ("vi.distributions", "MeanFieldNormal", "__init__"): (
        "mean=0.0",
        "std=1.0",
        "eps=1e-10",
    ),
    ("vi.distributions", "MeanFieldStudentT", "__init__"): (
        "mean=0.0",
        "scale=1.0",
        "degrees_of_freedom=4.0",
        "device=None",
    ),
    ("vi.distributions", "NonBayesian", "__init__"): ("loss_type=None",),
    ("vi.distributions", "Normal", "__init__"): ("mean=0.0", "std=1.0", "eps=1e-10"),
    ("vi.distributions", "StudentT", "__init__"): (
        "mean=0.0",
        "scale=1.0",
        "degrees_of_freedom=4.0",
        "device=None",
    ),
}


def _none_defaults(parameters: tuple[str, ...]) -> tuple[str, ...]:
    """torch_blue's object defaults (``MeanFieldNormal()``) are ``None`` here."""
    return tuple(re.sub(r"=\w+\(\)$", "=None", p) for p in parameters)


# Differences kept on purpose; each makes a torch_blue call raise, never bind
# an argument elsewhere. Key -> this library's parameters.
KNOWN: dict[tuple[str, str, str], tuple[str, ...]] = {
    # torch's name ``input`` (the library layer's forward); ``input_=x`` raises
    **{
        ("vi", name, "forward"): ("input",)
        for name in (
            "VIConv1d",
            "VIConv2d",
            "VIConv3d",
            "VILinear",
            "VIResidualConnection",
            "VISequential",
        )
    },
    ("vi", "VIModule", "forward"): ("*input",),
    # the divergences take their parameters positionally, as the loss passes them
    **{
        ("vi", name, "forward"): ("*parameters",)
        for name in (
            "KullbackLeiblerModule",
            "NonBayesianDivergence",
            "NormalNormalDivergence",
            "UniformNormalDivergence",
        )
    },
    # convert_overwrite: torch_blue's internal flag of its in-place convert
    ("vi", "VIModule", "__init__"): _none_defaults(
        TORCH_BLUE[("vi", "VIModule", "__init__")][:-1]
    ),
    # a VIReturn without log_probs is allowed (None)
    ("vi", "VIReturn", "__init__"): ("data", "log_probs=None"),
}

NAMESPACES = {"vi": vi, "vi.distributions": distributions, "vi.utils": utils}


def _describe(parameter: inspect.Parameter) -> str:
    prefix = {
        inspect.Parameter.VAR_POSITIONAL: "*",
        inspect.Parameter.VAR_KEYWORD: "**",
        inspect.Parameter.KEYWORD_ONLY: "kw:",
    }.get(parameter.kind, "")
    default = parameter.default
    if default is inspect.Parameter.empty:
        return prefix + parameter.name
    return f"{prefix}{parameter.name}={default!r}"


def _parameters(namespace: str, cls: str, method: str) -> tuple[str, ...]:
    function: Any = getattr(getattr(NAMESPACES[namespace], cls), method)
    parameters = list(inspect.signature(function).parameters.values())[1:]
    while parameters and parameters[-1].kind == inspect.Parameter.KEYWORD_ONLY:
        assert parameters[-1].default is not inspect.Parameter.empty, (
            f"{cls}.{method}: an extra keyword-only parameter needs a default"
        )
        parameters.pop()  # an extension no torch_blue call reaches
    return tuple(_describe(p) for p in parameters)


def _expected(key: tuple[str, str, str]) -> tuple[str, ...]:
    return KNOWN[key] if key in KNOWN else _none_defaults(TORCH_BLUE[key])


@pytest.mark.parametrize("key", sorted(TORCH_BLUE), ids=".".join)
def test_signature_is_torch_blues(key: tuple[str, str, str]) -> None:
    assert _parameters(*key) == _expected(key)


def test_known_differences_are_differences() -> None:
    # a difference fixed later must leave KNOWN
    for key, parameters in KNOWN.items():
        assert parameters != _none_defaults(TORCH_BLUE[key]), key


def test_every_public_vi_class_is_in_the_table() -> None:
    recorded = {(namespace, cls) for namespace, cls, _ in TORCH_BLUE}
    aliases = {"VISquential"}  # the paper's spelling of VISequential
    for namespace in ("vi", "vi.distributions"):
        module = NAMESPACES[namespace]
        for name in module.__all__:
            obj = getattr(module, name)
            if not inspect.isclass(obj) or name in aliases:
                continue
            if getattr(obj, "__init__", None) is object.__init__:
                continue
            in_torch_blue = name not in ("VIkwargs", "UniformPrior")
            if in_torch_blue and obj.__module__.startswith("pyrolite_bnn.vi"):
                assert (namespace, name) in recorded, name
