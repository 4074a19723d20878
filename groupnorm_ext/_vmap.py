"""The vmap batching rule of torch.ops.groupnorm_ext.group_norm.

Without one, torch.vmap runs the op once per sample (its slow fallback, with a warning). Group
normalization is independent per (sample, group), so a vmapped call is one call of our kernels on
a bigger problem:
- input batched, weight and bias shared: the vmap dimension joins the batch dimension,
  (B, N, C, *) -> (B * N, C, *), a view whenever the layout allows it (channels_last included);
- per-sample weight or bias (model ensembles, torch.func.stack_module_state): the B copies'
  channels sit side by side, (N, B, C, *) -> (N, B * C, *) with B * G groups, each copy's groups
  normalized with its own parameters.
Only when vmap is the innermost transform does this rule run: under grad / jvp the op already
runs ATen's group_norm, which has torch's own rules (csrc/autograd)."""
import torch

_OP = "groupnorm_ext::group_norm"


def _check_per_sample(input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps, activation):
    """The op's own checks on one sample's shapes (meta tensors, no data), so that a bad call raises
    the message it raises outside vmap rather than one about the folded shapes."""
    def sample(t, bdim):
        if t is None:
            return None
        shape = list(t.shape)
        if bdim is not None:
            del shape[bdim]
        return torch.empty(shape, dtype=t.dtype, device="meta")

    torch.ops.groupnorm_ext.group_norm(sample(input, x_bdim), num_groups, sample(weight, w_bdim),
                                       sample(bias, b_bdim), eps, activation)


@torch.library.register_vmap(_OP)
def _group_norm_vmap(info, in_dims, input, num_groups, weight=None, bias=None, eps=1e-5, activation="identity"):
    # in_dims has one entry per positional argument; the dispatcher may pass the trailing
    # arguments (those at their defaults) as keywords instead
    x_bdim, w_bdim, b_bdim = (in_dims[i] if i < len(in_dims) else None for i in (0, 2, 3))
    op = torch.ops.groupnorm_ext.group_norm
    if w_bdim is None and b_bdim is None:
        if x_bdim is None:
            return op(input, num_groups, weight, bias, eps, activation), None
        x = input.movedim(x_bdim, 0)
        if x.dim() < 3:  # a per-sample input of rank < 2: the op's own error
            return op(x.select(0, 0), num_groups, weight, bias, eps, activation), None
        try:
            out = op(x.flatten(0, 1), num_groups, weight, bias, eps, activation)
        except (RuntimeError, ValueError, TypeError, NotImplementedError):
            # the message should name one sample's shape, not the merged one
            _check_per_sample(input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps, activation)
            raise
        return out.unflatten(0, x.shape[:2]), 0

    batch = info.batch_size
    if batch == 0:  # no samples: B * G would be 0 groups, which the op rejects
        _check_per_sample(input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps, activation)
        x = input.movedim(x_bdim, 1) if x_bdim is not None else input.unsqueeze(1)[:, :0]
        return torch.empty_like(x, memory_format=torch.contiguous_format), 1
    try:
        return _folded_into_channels(op, batch, input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps,
                                     activation), 1
    except (RuntimeError, ValueError, TypeError, NotImplementedError, IndexError):
        # the one-sample checks (meta tensors) only when something failed: the message should name
        # one sample's shapes, not the folded ones
        _check_per_sample(input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps, activation)
        raise


def _folded_into_channels(op, batch, input, x_bdim, num_groups, weight, w_bdim, bias, b_bdim, eps, activation):
    """Per-sample weight or bias: (N, B, C, *) -> (N, B * C, *) with B * G groups, and back."""
    if x_bdim is None:
        x = input.unsqueeze(1).expand(input.shape[0], batch, *input.shape[1:])
    else:
        x = input.movedim(x_bdim, 1)
    channels = x.shape[2]

    def per_sample(p, bdim):
        if p is None:
            return None
        p = p.movedim(bdim, 0) if bdim is not None else p.expand(batch, channels)
        return p.reshape(batch * channels)

    out = op(x.flatten(1, 2), batch * num_groups, per_sample(weight, w_bdim), per_sample(bias, b_bdim), eps,
             activation)
    return out.unflatten(1, (batch, channels))
