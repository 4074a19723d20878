"""``convert_group_norm``: swap every :class:`torch.nn.GroupNorm` inside a model for
:class:`groupnorm_ext.GroupNorm`, keeping its parameters (the same ``Parameter`` objects, so
an optimizer built before the swap keeps training them), device, dtype, training mode and
state_dict keys."""
from typing import Optional

from torch import nn

from .modules import GroupNorm


def _swap(norm: nn.GroupNorm, activation: Optional[str] = None) -> GroupNorm:
    # built on the meta device (no allocation, no initialisation), then handed the very
    # Parameter objects of `norm` (or None when it has no affine parameters)
    new = GroupNorm(norm.num_groups, norm.num_channels, norm.eps, norm.affine, device="meta",
                    activation=activation, bias=norm.bias is not None)
    new.weight = norm.weight
    new.bias = norm.bias
    new.train(norm.training)
    for hooks in ("_forward_hooks", "_forward_pre_hooks", "_state_dict_hooks", "_load_state_dict_pre_hooks"):
        getattr(new, hooks).update(getattr(norm, hooks))
    return new


def _fusable_activation(module: nn.Module) -> Optional[str]:
    """The fused-activation name that computes what `module` computes, or None."""
    if module._forward_hooks or module._forward_pre_hooks:
        return None  # the hooks would no longer see the activation's call
    if type(module) is nn.SiLU:
        return "silu"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def _fuse_in_sequential(seq: nn.Sequential) -> None:
    """In an nn.Sequential, an nn.GroupNorm directly followed by nn.SiLU / nn.ReLU / nn.GELU becomes
    one GroupNorm with that activation fused, and the activation's slot an nn.Identity (so indices
    and state_dict keys stay as they were). Not when the norm has forward hooks: they would see
    the activation's output."""
    names = list(seq._modules)
    for name, next_name in zip(names, names[1:]):
        norm, act = seq._modules[name], seq._modules[next_name]
        if type(norm) is not nn.GroupNorm or norm._forward_hooks or act is None:
            continue
        activation = _fusable_activation(act)
        if activation is not None:
            setattr(seq, name, _swap(norm, activation))
            setattr(seq, next_name, nn.Identity())


def convert_group_norm(module: nn.Module, fuse_activations: bool = False) -> nn.Module:
    """Replaces, in place, every ``torch.nn.GroupNorm`` submodule of ``module`` (at any depth:
    Sequential, ModuleList, ModuleDict, attributes) by a ``groupnorm_ext.GroupNorm`` with the
    same configuration and the same parameters, and returns ``module``. When ``module``
    itself is an ``nn.GroupNorm``, the replacement is returned (a module cannot replace itself
    in its parent). Subclasses of ``nn.GroupNorm`` are left alone: their ``forward`` may do
    more than group normalization.

    ``fuse_activations=True`` also fuses, inside ``nn.Sequential`` containers, an
    ``nn.GroupNorm`` directly followed by ``nn.SiLU``, ``nn.ReLU`` or ``nn.GELU``: the norm
    becomes ``GroupNorm(..., activation=...)`` and the activation's slot an ``nn.Identity``
    (same outputs, one pass instead of two; state_dict keys unchanged). Activations called from
    a module's ``forward`` code cannot be seen from here and stay separate."""
    if type(module) is nn.GroupNorm:
        return _swap(module)
    if fuse_activations and type(module) is nn.Sequential:
        _fuse_in_sequential(module)
    for name, child in module.named_children():
        if type(child) is nn.GroupNorm:
            setattr(module, name, _swap(child))
        else:
            convert_group_norm(child, fuse_activations)
    return module
