"""``convert_group_norm``: swap every :class:`torch.nn.GroupNorm` inside a model for
:class:`groupnorm_ext.GroupNorm`, keeping its parameters (the same ``Parameter`` objects, so
an optimizer built before the swap keeps training them), device, dtype, training mode and
state_dict keys."""
from torch import nn

from .modules import GroupNorm


def _swap(norm: nn.GroupNorm) -> GroupNorm:
    # built on the meta device (no allocation, no initialisation), then handed the very
    # Parameter objects of `norm` (or None when it has no affine parameters)
    new = GroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta",
                    bias=norm.bias is not None)
    new.weight = norm.weight
    new.bias = norm.bias
    new.train(norm.training)
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
        getattr(new, hooks).update(getattr(norm, hooks))
    return new


def convert_group_norm(module: nn.Module) -> nn.Module:
    """Replaces, in place, every ``torch.nn.GroupNorm`` submodule of ``module`` (at any depth:
    Sequential, ModuleList, ModuleDict, attributes) by a ``groupnorm_ext.GroupNorm`` with the
    same configuration and the same parameters, and returns ``module``. When ``module``
    itself is an ``nn.GroupNorm``, the replacement is returned (a module cannot replace itself
    in its parent). Subclasses of ``nn.GroupNorm`` are left alone: their ``forward`` may do
    more than group normalization."""
    if type(module) is nn.GroupNorm:
        return _swap(module)
    for name, child in module.named_children():
        if type(child) is nn.GroupNorm:
            setattr(module, name, _swap(child))
        else:
            convert_group_norm(child)
    return module
