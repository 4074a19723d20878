"""``GroupNorm``: a drop-in replacement for :class:`torch.nn.GroupNorm`."""
from typing import Optional

import torch
from torch import Tensor, nn
from torch.nn import init

from .functional import group_norm


class GroupNorm(nn.Module):
    r"""Applies Group Normalization over a mini-batch of inputs (N, C, \*).

    Same constructor arguments, attributes, parameter initialisation and state_dict keys
    as :class:`torch.nn.GroupNorm`, so an ``nn.GroupNorm`` state_dict loads unchanged.
    ``activation`` (``None`` or ``"identity"``) names an activation fused after the
    affine transform.
    """

    __constants__ = ["num_groups", "num_channels", "eps", "affine", "activation"]
    num_groups: int
    num_channels: int
    eps: float
    affine: bool
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
    ) -> None:
        factory_kwargs = {"device": device, "dtype": dtype}
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError("num_channels must be divisible by num_groups")
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.activation = activation
        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_channels, **factory_kwargs))
            self.bias = nn.Parameter(torch.empty(num_channels, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.affine:
            init.ones_(self.weight)
            init.zeros_(self.bias)

    def forward(self, input: Tensor) -> Tensor:
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps, self.activation)

    def extra_repr(self) -> str:
        s = "{num_groups}, {num_channels}, eps={eps}, affine={affine}".format(**self.__dict__)
        if self.activation is not None and self.activation != "identity":
            s += f", activation={self.activation!r}"
        return s
