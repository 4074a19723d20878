"""``GroupNorm``: a drop-in replacement for :class:`torch.nn.GroupNorm`."""
import inspect
from typing import Optional

from torch import Tensor, nn

from .functional import SUPPORTED_ACTIVATIONS, group_norm


def _init_takes_bias(cls) -> bool:
    try:
        return "bias" in inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return False


# nn.GroupNorm takes a keyword-only ``bias`` in torch 2.13 and 2.14; older releases (2.11, say) reject
# it, so there the flag is applied after the base constructor, with the same result.
_BASE_TAKES_BIAS = _init_takes_bias(nn.GroupNorm)


class GroupNorm(nn.GroupNorm):
    r"""Applies Group Normalization over a mini-batch of inputs (N, C, \*).

    A subclass of :class:`torch.nn.GroupNorm`: the same constructor arguments (``bias=False``
    keeps the weight and drops the bias, as there), attributes, parameter initialisation, repr and
    state_dict keys, so an ``nn.GroupNorm`` state_dict loads
    unchanged and code that recognises norms with ``isinstance(m, nn.GroupNorm)`` (weight
    initialisation, weight-decay groups) treats it as one. ``activation`` names an activation
    fused after the affine transform: ``None`` (or ``"identity"``), ``"silu"``, ``"relu"``,
    ``"gelu"`` or ``"gelu_tanh"`` (see :func:`groupnorm_ext.group_norm`); ``GroupNorm(32, C,
    activation="silu")`` computes ``nn.SiLU()(nn.GroupNorm(32, C)(x))`` in one pass.
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine", "activation"]
    activation: Optional[str]

    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        affine: bool = True,
        device=None,
        dtype=None,
        activation: Optional[str] = None,
        *,
        bias: bool = True,
    ) -> None:
        if _BASE_TAKES_BIAS:
            super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype, bias=bias)
        else:
            super().__init__(num_groups, num_channels, eps, affine, device=device, dtype=dtype)
            if affine and not bias:
                self.bias = None  # as torch >= 2.13: the weight stays, "bias" a None parameter
        if activation is not None and not isinstance(activation, str):
            raise TypeError(f"GroupNorm: activation must be a str or None, not {type(activation).__name__}")
        if activation is not None and activation not in SUPPORTED_ACTIVATIONS:
            raise ValueError(f"GroupNorm: unknown activation {activation!r}; supported activations: None, "
                             + ", ".join(repr(a) for a in SUPPORTED_ACTIVATIONS))
        self.activation = activation

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        s = super().extra_repr()
        if self.activation is not None and self.activation != "identity":
            s += f", activation={self.activation!r}"
        return s
