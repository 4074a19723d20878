"""Fake (meta) kernels for every op, so that torch.compile and torch.export trace them
without running them. They follow the C++ kernels' shape, dtype and layout rules."""
import torch

_LIB = "groupnorm_ext"


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channels_last_strides(sizes, strides, order) -> bool:
    """c10's is_channels_last_strides_2d_s4 / _3d_s5 (c10/core/MemoryFormat.h), which
    Tensor::suggest_memory_format reads and the C++ kernels follow: strides non-decreasing in
    channels-last order, size-1 dims not scaling, ambiguous N111-like strides read as contiguous.
    Written out rather than taken from torch._prims_common, whose copy of the rule differed
    from C++ on some size-1 strides in torch releases this library still builds against."""
    if strides[1] == 0:
        return False
    smallest = 0
    for d in order:
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def _suggest_memory_format(input: torch.Tensor) -> torch.memory_format:
    """Tensor::suggest_memory_format: the layout torch's CPU group_norm gives its output."""
    if input.dim() == 4 and _channels_last_strides(input.shape, input.stride(), (1, 3, 2, 0)):
        return torch.channels_last
    if input.dim() == 5 and _channels_last_strides(input.shape, input.stride(), (1, 4, 3, 2, 0)):
        return torch.channels_last_3d
    return torch.contiguous_format


def _empty_like_layout(input: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """The forward output's layout (csrc/common.cpp, empty_in_format): torch's memory format for
    the input, with torch's strides for it."""
    return torch.empty(input.shape, dtype=dtype, device=input.device, memory_format=_suggest_memory_format(input))


def _empty_like_dense_input(input: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """grad_input's layout (csrc/common.cpp, allocate_backward_outputs): from torch 2.14 the strides
    of the input as the kernels read it, the caller's tensor when it is already dense in its
    format (size-1 dims keep whatever strides they have, as in torch's backward), else a dense
    copy in that format; torch's strides for the format when empty, and before 2.14."""
    memory_format = _suggest_memory_format(input)
    if _GRAD_INPUT_KEEPS_INPUT_STRIDES and input.numel() > 0 and input.is_contiguous(memory_format=memory_format):
        return torch.empty_strided(input.shape, input.stride(), dtype=dtype, device=input.device)
    return torch.empty(input.shape, dtype=dtype, device=input.device, memory_format=memory_format)


_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)

# The op's activation names (csrc/activation.h); functional.SUPPORTED_ACTIVATIONS is this tuple.
ACTIVATIONS = ("identity", "silu", "relu", "gelu", "gelu_tanh")


def _check_activation(op, activation):
    torch._check(activation in ACTIVATIONS, lambda: (
        f"{op}: unknown activation '{activation}'; supported activations: 'identity' (or None in Python), "
        "'silu', 'relu', 'gelu', 'gelu_tanh'"))

# torch's group_norm rejects C == 0 and a spatial size of 0 from 2.14 on (csrc/common.cpp follows
# the torch it is built against, and so do these checks).
_REJECTS_EMPTY_CHANNELS_OR_SPATIAL = torch.torch_version.TorchVersion(torch.__version__) >= (2, 14)
# ... and keeps the strides of its input in grad_input (csrc/common.cpp, allocate_backward_outputs).
_GRAD_INPUT_KEEPS_INPUT_STRIDES = _REJECTS_EMPTY_CHANNELS_OR_SPATIAL


def _check_param(name, param, input):
    if param is None:
        return
    C = input.shape[1]
    torch._check(param.dim() == 1 and param.numel() == C, lambda: (
        f"Expected {name} to be a vector of size equal to the number of channels in input, but got {name} of "
        f"shape {list(param.shape)} and input of shape {list(input.shape)}"))
    torch._check(param.device == input.device, lambda: (
        f"group_norm: expected all tensors to be on the same device, but {name} is on {param.device} "
        f"and input is on {input.device}"))
    low = input.dtype in (torch.float16, torch.bfloat16)
    torch._check(param.dtype == input.dtype or (low and param.dtype == torch.float32), lambda: (
        f"group_norm: {name} has dtype {param.dtype} but input has dtype {input.dtype}"))


def _check(input, num_groups, weight=None, bias=None) -> None:
    """The C++ kernels' checks (csrc/common.cpp), with the same messages (torch's own for the shape
    checks), so that meta / fake calls fail the same way."""
    torch._check(input.dim() >= 2, lambda: f"Expected at least 2 dimensions for input tensor but received {input.dim()}")
    torch._check_not_implemented(input.dtype in _FLOAT_DTYPES, lambda: (
        f"group_norm: expected a floating-point input (float32, float64, float16 or bfloat16), "
        f"but got {input.dtype}"))
    torch._check(num_groups > 0, lambda: f"Expected num groups to be greater than 0, got {num_groups}")
    torch._check(input.shape[1] % num_groups == 0, lambda: (
        f"Expected number of channels in input to be divisible by num_groups, but got input of shape "
        f"{list(input.shape)} and num_groups={num_groups}"))
    if _REJECTS_EMPTY_CHANNELS_OR_SPATIAL:
        torch._check(input.shape[1] > 0, lambda: f"Expected number of channels to be greater than 0, got {input.shape[1]}")
        spatial = 1
        for size in input.shape[2:]:
            spatial = spatial * size
        torch._check(spatial > 0, lambda: f"Expected HxW to be greater than 0, got {spatial}")
    _check_param("weight", weight, input)
    _check_param("bias", bias, input)


def _check_like_input(name, t, input, shape=None):
    if t is None:
        return
    torch._check(t.device == input.device, lambda: (
        f"group_norm_backward: expected all tensors to be on the same device, but {name} is on {t.device} "
        f"and input is on {input.device}"))
    if shape is not None:
        torch._check(t.numel() == shape[0] * shape[1], lambda: f"group_norm_backward: expected {name} of shape {shape}")


@torch.library.register_fake(f"{_LIB}::group_norm")
def _group_norm_fake(input, num_groups, weight=None, bias=None, eps=1e-5, activation="identity"):
    _check(input, num_groups, weight, bias)
    _check_activation("group_norm", activation)
    return _empty_like_layout(input, input.dtype)


@torch.library.register_fake(f"{_LIB}::group_norm_forward")
def _group_norm_forward_fake(input, num_groups, weight, bias, eps, activation):
    _check(input, num_groups, weight, bias)
    _check_activation("group_norm_forward", activation)
    out = _empty_like_layout(input, input.dtype)
    stats = _stats_dtype(input.dtype)
    mean = input.new_empty((input.shape[0], num_groups), dtype=stats)
    rstd = input.new_empty((input.shape[0], num_groups), dtype=stats)
    return out, mean, rstd


@torch.library.register_fake(f"{_LIB}::group_norm_backward")
def _group_norm_backward_fake(grad_out, input, mean, rstd, weight, bias, num_groups, activation,
                              output_mask):
    _check(input, num_groups, weight, bias)
    _check_activation("group_norm_backward", activation)
    _check_like_input("grad_out", grad_out, input)
    torch._check(grad_out.shape == input.shape, lambda: "group_norm_backward: grad_out must have the input's shape")
    _check_like_input("mean", mean, input, (input.shape[0], num_groups))
    _check_like_input("rstd", rstd, input, (input.shape[0], num_groups))
    grad_input = _empty_like_dense_input(input, input.dtype) if output_mask[0] else None
    grad_weight = torch.empty_like(weight) if (output_mask[1] and weight is not None) else None
    grad_bias = torch.empty_like(bias) if (output_mask[2] and bias is not None) else None
    return grad_input, grad_weight, grad_bias
