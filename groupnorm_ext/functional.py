"""Functional API: ``group_norm``, with torch.nn.functional.group_norm's argument order."""
from typing import Optional

import torch
from torch import Tensor

SUPPORTED_ACTIVATIONS = ("identity",)


def group_norm(
    input: Tensor,
    num_groups: int,
    weight: Optional[Tensor] = None,
    bias: Optional[Tensor] = None,
    eps: float = 1e-5,
    activation: Optional[str] = None,
) -> Tensor:
    r"""Group Normalization over an input of shape (N, C, \*), optionally followed by a
    fused activation: ``act((x - mean) / sqrt(var + eps) * weight + bias)`` with mean and
    (biased) variance taken over each group of ``C // num_groups`` channels.

    Same arguments, in the same order, as :func:`torch.nn.functional.group_norm`, plus
    ``activation`` (``None`` or ``"identity"``). Differentiable; scriptable.
    """
    act = "identity" if activation is None else activation
    return torch.ops.groupnorm_ext.group_norm(input, num_groups, weight, bias, eps, act)
