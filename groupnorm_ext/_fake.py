"""Fake (meta) kernels for every op, so that torch.compile and torch.export trace them
without running them. They follow the C++ kernels' shape, dtype and layout rules."""
import torch

_LIB = "groupnorm_ext"


def _stats_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _channels_last_permutation(dim: int):
    return [0] + list(range(2, dim)) + [1]


def _empty_like_layout(input: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """An empty tensor in the layout the kernels produce: channels innermost when the input
    is dense with channels innermost (and not contiguous), contiguous otherwise."""
    if input.dim() >= 3 and not input.is_contiguous():
        perm = _channels_last_permutation(input.dim())
        if input.permute(perm).is_contiguous():
            inverse = [0] * len(perm)
            for i, p in enumerate(perm):
                inverse[p] = i
            return input.new_empty([input.shape[p] for p in perm], dtype=dtype).permute(inverse)
    return input.new_empty(input.shape, dtype=dtype)


def _check(input: torch.Tensor, num_groups: int) -> None:
    torch._check(input.dim() >= 2, lambda: "group_norm: expected an input with at least 2 dimensions")
    torch._check(num_groups > 0, lambda: "group_norm: num_groups must be positive")
    torch._check(input.shape[1] % num_groups == 0,
                 lambda: "group_norm: expected the number of channels to be divisible by num_groups")


@torch.library.register_fake(f"{_LIB}::group_norm")
def _group_norm_fake(input, num_groups, weight=None, bias=None, eps=1e-5, activation="identity"):
    _check(input, num_groups)
    return _empty_like_layout(input, input.dtype)


@torch.library.register_fake(f"{_LIB}::group_norm_forward")
def _group_norm_forward_fake(input, num_groups, weight, bias, eps, activation):
    _check(input, num_groups)
    out = _empty_like_layout(input, input.dtype)
    stats = _stats_dtype(input.dtype)
    mean = input.new_empty((input.shape[0], num_groups), dtype=stats)
    rstd = input.new_empty((input.shape[0], num_groups), dtype=stats)
    return out, mean, rstd


@torch.library.register_fake(f"{_LIB}::group_norm_backward")
def _group_norm_backward_fake(grad_out, input, mean, rstd, weight, bias, num_groups, activation,
                              output_mask):
    _check(input, num_groups)
    grad_input = _empty_like_layout(input, input.dtype) if output_mask[0] else None
    grad_weight = torch.empty_like(weight) if (output_mask[1] and weight is not None) else None
    grad_bias = torch.empty_like(bias) if (output_mask[2] and bias is not None) else None
    return grad_input, grad_weight, grad_bias
