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
    if not torch.jit.is_scripting():
        _check_argument_types(input, num_groups, weight, bias, eps, activation)
    act = "identity" if activation is None else activation
    return torch.ops.groupnorm_ext.group_norm(input, num_groups, weight, bias, eps, act)


def _check_argument_types(input, num_groups, weight, bias, eps, activation) -> None:
    """TypeError for arguments of the wrong type, as torch.nn.functional.group_norm raises
    (the op itself would report them as a RuntimeError from schema matching)."""
    if not isinstance(input, Tensor):
        raise TypeError(f"group_norm(): argument 'input' must be Tensor, not {type(input).__name__}")
    if not isinstance(num_groups, int) or isinstance(num_groups, bool):
        raise TypeError(f"group_norm(): argument 'num_groups' must be int, not {type(num_groups).__name__}")
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            raise TypeError(f"group_norm(): argument '{name}' must be Tensor, not {type(value).__name__}")
    if not isinstance(eps, (float, int)) or isinstance(eps, bool):
        raise TypeError(f"group_norm(): argument 'eps' must be float, not {type(eps).__name__}")
    if activation is not None and not isinstance(activation, str):
        raise TypeError(f"group_norm(): argument 'activation' must be str or None, not {type(activation).__name__}")
