"""``convert_group_norm``: make every :class:`torch.nn.GroupNorm` inside a model a
:class:`groupnorm_ext.GroupNorm`, in place: the module objects stay, only their class changes,
so parameters (an optimizer built before keeps training them), buffers, attributes, hooks of
every kind (and their handles), device, dtype, training mode, state_dict keys and shared
instances all stay as they were."""
import copy
from collections import Counter
from typing import Optional

from torch import nn

from .modules import GroupNorm


def _convert_in_place(norm: nn.GroupNorm, activation: Optional[str] = None) -> GroupNorm:
    # GroupNorm subclasses nn.GroupNorm and adds only `activation` (and forward): the object's
    # state is already a GroupNorm's. Building a new module and copying state over would lose
    # what the copy does not know of (backward hooks, with_kwargs / always_call flags, extra
    # buffers, attributes, hook handles, sharing).
    norm.__class__ = GroupNorm
    norm.activation = activation
    return norm


def _fused_copy(norm: nn.GroupNorm, activation: str) -> GroupNorm:
    # A new object for the Sequential's slot, holding the norm's own Parameters, buffers and
    # attributes (its state's containers copied, their contents shared): every other reference
    # to `norm` (another part of the model, outside what was converted, user code calling it)
    # keeps computing the norm alone. Only called for a norm without hooks.
    fused = GroupNorm.__new__(GroupNorm)
    fused.__dict__.update({key: copy.copy(value) if isinstance(value, (dict, set, list)) else value
                           for key, value in norm.__dict__.items()})
    fused.activation = activation
    return fused


def _has_hooks(module: nn.Module, *kinds: str) -> bool:
    return any(getattr(module, kind, None) for kind in kinds)


# Hooks that see a module's output or its gradient: on a norm fused with the activation after it
# they would see the activation's instead.
_OUTPUT_HOOKS = ("_forward_hooks", "_backward_hooks", "_backward_pre_hooks")
_ALL_HOOKS = _OUTPUT_HOOKS + ("_forward_pre_hooks", "_state_dict_hooks", "_state_dict_pre_hooks",
                              "_load_state_dict_pre_hooks", "_load_state_dict_post_hooks")


def _fusable_activation(module: nn.Module) -> Optional[str]:
    """The fused-activation name that computes what `module` computes, or None."""
    if _has_hooks(module, "_forward_pre_hooks", *_OUTPUT_HOOKS):
        return None  # the hooks would no longer see the activation's call
    if type(module) is nn.SiLU:
        return "silu"
    if type(module) is nn.ReLU:
        return "relu"
    if type(module) is nn.GELU:
        return {"none": "gelu", "tanh": "gelu_tanh"}.get(module.approximate)
    return None


def _fuse_in_sequential(seq: nn.Sequential, uses: Counter) -> None:
    """In an nn.Sequential, an nn.GroupNorm directly followed by nn.SiLU / nn.ReLU / nn.GELU becomes
    a GroupNorm with that activation fused (a new module over the norm's own Parameters and
    buffers), and the activation's slot an nn.Identity (so indices and state_dict keys stay as
    they were). Not when the norm has hooks (a new object would not carry them, and some would
    see the activation's output), nor when the same norm object is used elsewhere in the model
    (its uses would stop being one module)."""
    names = list(seq._modules)
    for name, next_name in zip(names, names[1:]):
        norm, act = seq._modules[name], seq._modules[next_name]
        if type(norm) is not nn.GroupNorm or act is None or uses[id(norm)] != 1 or _has_hooks(norm, *_ALL_HOOKS):
            continue
        activation = _fusable_activation(act)
        if activation is not None:
            setattr(seq, name, _fused_copy(norm, activation))
            setattr(seq, next_name, nn.Identity())


def _convert_children(module: nn.Module, fuse_activations: bool, uses: Counter) -> None:
    if fuse_activations and type(module) is nn.Sequential:
        _fuse_in_sequential(module, uses)
    for child in module.children():
        if type(child) is nn.GroupNorm:
            _convert_in_place(child)
        else:
            _convert_children(child, fuse_activations, uses)


def convert_group_norm(module: nn.Module, fuse_activations: bool = False) -> nn.Module:
    """Makes every ``torch.nn.GroupNorm`` submodule of ``module`` (at any depth: Sequential,
    ModuleList, ModuleDict, attributes), or ``module`` itself, a ``groupnorm_ext.GroupNorm``, in
    place, and returns ``module``. Only the class of each norm changes: its parameters, buffers,
    attributes and hooks stay, and so does every reference to it. Subclasses of ``nn.GroupNorm``
    are left alone: their ``forward`` may do more than group normalization.

    ``fuse_activations=True`` also fuses, inside ``nn.Sequential`` containers, an
    ``nn.GroupNorm`` directly followed by ``nn.SiLU``, ``nn.ReLU`` or ``nn.GELU``: the norm's
    slot gets a ``GroupNorm(..., activation=...)`` over the same Parameters and buffers (the
    norm object itself is left unfused, so any other reference to it still computes the norm
    alone) and the activation's slot an ``nn.Identity`` (same outputs, one pass instead of two;
    state_dict keys unchanged). Not for a norm or activation with hooks, nor for a norm object
    also used elsewhere in the model. Activations called from a module's ``forward`` code cannot
    be seen from here and stay separate."""
    if type(module) is nn.GroupNorm:
        return _convert_in_place(module)
    uses = Counter(id(m) for _, m in module.named_modules(remove_duplicate=False)) if fuse_activations else Counter()
    _convert_children(module, fuse_activations, uses)
    return module
