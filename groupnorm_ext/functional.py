"""Functional API: ``group_norm``, with torch.nn.functional.group_norm's argument order."""
import operator
import warnings
from typing import List, Optional

import torch
from torch import Tensor
from torch.overrides import handle_torch_function, has_torch_function_variadic

from . import _C, _fake

# The fused activations (the op's `activation` string): torch.nn.functional's names, with
# "gelu_tanh" for F.gelu(approximate="tanh").
SUPPORTED_ACTIVATIONS = _fake.ACTIVATIONS

# torch.jit.trace records the sizes the checks below read as tensors and warns when one becomes a
# bool; the trace keeps the check's outcome as a constant, which is right for a shape check. The
# warnings are silenced for this module as torch silences them for its own
# (TracerWarning.ignore_lib_warnings).
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"groupnorm_ext\.functional")


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
    ``activation``: ``None`` (or ``"identity"``), ``"silu"``, ``"relu"``, ``"gelu"`` or
    ``"gelu_tanh"``, the same values as ``F.silu``, ``F.relu``, ``F.gelu`` and
    ``F.gelu(approximate="tanh")`` applied to the normalized output, computed before it is
    rounded to the input's dtype. Differentiable (double backward included); scriptable.
    """
    if not torch.jit.is_scripting():
        # Tensor-likes (torch.fx proxies, tensor subclasses, __torch_function__ modes) take
        # over first, as they do for torch.nn.functional.group_norm: symbolic_trace then records
        # this function as one node.
        if has_torch_function_variadic(input, weight, bias):
            return handle_torch_function(group_norm, (input, weight, bias), input, num_groups, weight=weight,
                                         bias=bias, eps=eps, activation=activation)
        # The usual call (a tensor, an int, a float, tensors or None) passes one chain of type
        # tests; anything else is converted or rejected by _check_argument_types. (Per-call cost
        # matters: on small tensors the whole op takes ~10 us.)
        if not (type(num_groups) is int and type(eps) is float and isinstance(input, Tensor)
                and (weight is None or isinstance(weight, Tensor)) and (bias is None or isinstance(bias, Tensor))
                and (activation is None or type(activation) is str)):
            num_groups, eps = _check_argument_types(input, num_groups, weight, bias, eps, activation)
    # torch.nn.functional.group_norm's _verify_batch_size raises when a group would hold one
    # value, N * (C // num_groups) * S == 1; that needs N == 1 and C < 2 * num_groups, which two
    # comparisons rule out on every other call. (Rank, C % num_groups and num_groups <= 0 the op
    # checks.)
    shape = input.shape
    if len(shape) >= 2 and shape[0] == 1 and 0 < num_groups and shape[1] < 2 * num_groups:
        _check_more_than_one_value_per_group(shape, num_groups)
    if num_groups == 0 and len(shape) >= 2 and not torch.jit.is_scripting():
        raise ZeroGroupsError("Expected num groups to be greater than 0, got 0")
    act = "identity" if activation is None else activation
    if not torch.jit.is_scripting():
        if not (torch.compiler.is_compiling() or type(input) is not Tensor or torch._C._get_tracing_state()):
            # Eager: the same op through the dispatcher's typed entry (_C._group_norm), ~2 us
            # less per call than the boxed torch.ops path. TorchScript, torch.compile and
            # export (Dynamo traces this function; export's tensors are fakes) and
            # torch.jit.trace take the paths below.
            return _C._group_norm(input, num_groups, weight, bias, eps, act)
        if act in SUPPORTED_ACTIVATIONS and torch.onnx.is_in_onnx_export():
            # An ONNX graph cannot hold this library's kernels: both ONNX exporters get torch's
            # group_norm (and activation), which they translate (GroupNormalization or its
            # decomposition), so a model with ours exports as it does with nn.GroupNorm. (1.3 us
            # to ask, hence only on the tracing paths.)
            return _torch_activation(torch.nn.functional.group_norm(input, num_groups, weight, bias, eps), act)
    return torch.ops.groupnorm_ext.group_norm(input, num_groups, weight, bias, eps, act)


class ZeroGroupsError(ZeroDivisionError, RuntimeError):
    """num_groups == 0. torch.nn.functional.group_norm dies with ZeroDivisionError there
    (input.size(1) // 0 in its Python prelude), torch.group_norm and the op itself raise
    RuntimeError with this message: code written against either catches this one."""


def _torch_activation(y: Tensor, activation: str) -> Tensor:
    """torch.nn.functional's op for a fused activation's name."""
    if activation == "silu":
        return torch.nn.functional.silu(y)
    if activation == "relu":
        return torch.nn.functional.relu(y)
    if activation == "gelu":
        return torch.nn.functional.gelu(y)
    if activation == "gelu_tanh":
        return torch.nn.functional.gelu(y, approximate="tanh")
    return y


def _check_more_than_one_value_per_group(shape: List[int], num_groups: int) -> None:
    values = shape[0] * (shape[1] // num_groups)
    for d in range(2, len(shape)):
        values *= shape[d]
    if values == 1:
        size = [shape[0] * shape[1] // num_groups, num_groups] + list(shape[2:])
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def _check_argument_types(input, num_groups, weight, bias, eps, activation):
    """TypeError for arguments of the wrong type, as torch.nn.functional.group_norm raises (the op
    itself would report them as a RuntimeError from schema matching). Returns num_groups and eps as
    int and float, converted the way torch's argument parser converts them: num_groups from any
    integer with __index__ (NumPy integers, 0-dim integer tensors) but not bool; eps from any real
    number (bool and NumPy scalars included) or a 0-dim tensor."""
    if not isinstance(input, Tensor):
        raise _argument_type_error("input", "Tensor", input)
    if type(num_groups) is not int:
        num_groups = _index_argument("num_groups", num_groups)
    for name, value in (("weight", weight), ("bias", bias)):
        if value is not None and not isinstance(value, Tensor):
            raise _argument_type_error(name, "Tensor", value)
    if type(eps) is not float:
        eps = _real_argument("eps", eps)
    if activation is not None and not isinstance(activation, str):
        raise _argument_type_error("activation", "str or None", activation)
    return num_groups, eps


def _index_argument(name: str, value) -> int:
    is_integer_tensor = (isinstance(value, Tensor) and value.dim() == 0
                         and not (value.is_floating_point() or value.is_complex() or value.dtype == torch.bool))
    if not isinstance(value, (bool, float, Tensor)) or is_integer_tensor:
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise _argument_type_error(name, "int", value)


def _real_argument(name: str, value) -> float:
    if isinstance(value, Tensor):
        if value.dim() == 0 and not value.is_complex():
            return float(value)
    elif not isinstance(value, (str, bytes, complex)):
        try:
            return float(value)
        except (TypeError, ValueError):
            pass
    raise _argument_type_error(name, "float", value)


# Positions in group_norm's signature, as torch's argument parser names them in its TypeErrors.
_ARGUMENT_POSITIONS = {"input": 1, "num_groups": 2, "weight": 3, "bias": 4, "eps": 5, "activation": 6}


def _argument_type_error(name: str, expected: str, value) -> TypeError:
    """torch's argument-parser TypeError, word for word: "group_norm(): argument 'eps' (position 5)
    must be float, not str". The type is named as CPython's tp_name names it: a class defined in
    Python by its name, a C type by its dotted path (numpy.ndarray)."""
    t = type(value)
    is_python_class = bool(t.__flags__ & (1 << 9))  # Py_TPFLAGS_HEAPTYPE
    type_name = t.__name__ if is_python_class or t.__module__ == "builtins" else f"{t.__module__}.{t.__name__}"
    return TypeError(f"group_norm(): argument '{name}' (position {_ARGUMENT_POSITIONS[name]}) must be {expected}, "
                     f"not {type_name}")
