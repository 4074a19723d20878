"""torch's own test catalogues for group norm, run against ours: the OpInfo of
nn.functional.group_norm (sample inputs and error inputs) and the ModuleInfo of nn.GroupNorm
(constructor + forward inputs and error inputs), from torch.testing._internal.

Run as a script (test_torch_catalogue.py starts it in a child process: importing torch's testing
internals changes global state, torch.backends flags and TorchScript call hooks among others).
Prints one JSON object: for each part, the number of checks made and the failures.
"""
import json
import os
import re
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import groupnorm_ext  # noqa: E402
from reference import tol  # noqa: E402

from torch.testing._internal.common_methods_invocations import op_db  # noqa: E402
from torch.testing._internal.common_modules import module_db  # noqa: E402

DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def _close(actual, expected, dtype, grad=False):
    """None when close (NaN where torch has NaN), else the assert_close message."""
    if actual is None or expected is None:
        return None if actual is None and expected is None else f"one of the two is None: {actual} / {expected}"
    try:
        torch.testing.assert_close(actual, expected, equal_nan=True, **tol(dtype, grad))
    except AssertionError as e:
        return str(e)[:400]
    return None


def _grads(out, inputs, grad_out):
    wanted = [t for t in inputs if isinstance(t, torch.Tensor) and t.requires_grad]
    if not out.requires_grad or not wanted:
        return []
    return list(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))


def _detached_copy(t):
    if not isinstance(t, torch.Tensor):
        return t
    return t.detach().clone().requires_grad_(t.requires_grad)


def check_op_samples(op):
    checks, failures = 0, []
    for dtype in DTYPES:
        # reference_inputs: the sample inputs and more (larger batches, every group count)
        for i, s in enumerate(op.reference_inputs("cpu", dtype, requires_grad=True)):
            label = f"{dtype} sample {i}: input {tuple(s.input.shape)}, args {s.args}, eps {s.kwargs.get('eps')}"
            theirs_in = [s.input] + [s.kwargs.get(k) for k in ("weight", "bias")]
            ours_in = [_detached_copy(t) for t in theirs_in]
            kw = dict(s.kwargs)
            expected = F.group_norm(theirs_in[0], *s.args, **{**kw, "weight": theirs_in[1], "bias": theirs_in[2]})
            out = groupnorm_ext.group_norm(ours_in[0], *s.args, **{**kw, "weight": ours_in[1], "bias": ours_in[2]})
            checks += 1
            problems = []
            if out.shape != expected.shape or out.dtype != expected.dtype or out.stride() != expected.stride():
                problems.append(f"output {out.shape}/{out.dtype}/{out.stride()} vs torch's "
                                f"{expected.shape}/{expected.dtype}/{expected.stride()}")
            elif (msg := _close(out, expected, dtype)) is not None:
                problems.append("output: " + msg)
            if not problems and out.numel() > 0:
                grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(i)).to(dtype)
                for name, a, b in zip(("input", "weight", "bias"), _grads(out, ours_in, grad_out),
                                      _grads(expected, theirs_in, grad_out)):
                    if (msg := _close(a, b, dtype, grad=True)) is not None:
                        problems.append(f"grad {name}: " + msg)
            if not problems and dtype == torch.float64 and op.supports_forward_ad and out.numel() > 0:
                # forward-mode AD (torch.func.jvp), which the OpInfo says torch supports
                tangents = tuple(torch.randn_like(t) for t in ours_in if t is not None)

                present = [t is not None for t in ours_in]

                def call(f, *primals):
                    it = iter(primals)
                    x, w, b = [next(it) if p else None for p in present]
                    return f(x, *s.args, **{**kw, "weight": w, "bias": b})

                primals = tuple(t.detach() for t in ours_in if t is not None)
                _, t_ours = torch.func.jvp(lambda *p: call(groupnorm_ext.group_norm, *p), primals, tangents)
                _, t_theirs = torch.func.jvp(lambda *p: call(F.group_norm, *p), primals, tangents)
                if (msg := _close(t_ours, t_theirs, dtype, grad=True)) is not None:
                    problems.append("jvp: " + msg)
            if problems:
                failures.append(f"{label}: " + "; ".join(problems))
    return checks, failures


def _raises_as_expected(call, expected):
    """None when call() raises expected.error_type with a message matching expected.error_regex
    (an ErrorInput or ModuleErrorInfo of torch's catalogue), else what went wrong."""
    try:
        call()
    except Exception as ex:  # noqa: BLE001  (compared with what torch's catalogue expects)
        if isinstance(ex, expected.error_type) and re.search(expected.error_regex, str(ex)):
            return None
        return (f"raised {type(ex).__name__}({str(ex)[:200]!r}), torch's catalogue expects "
                f"{expected.error_type.__name__} matching {expected.error_regex!r}")
    return f"no exception, torch's catalogue expects {expected.error_type.__name__}"


def check_op_errors(op):
    checks, failures = 0, []
    for e in op.error_inputs("cpu"):
        s = e.sample_input
        label = f"input {tuple(s.input.shape)}, args {s.args}, kwargs {s.kwargs}"
        checks += 1
        problem = _raises_as_expected(lambda: groupnorm_ext.group_norm(s.input, *s.args, **s.kwargs), e)
        if problem:
            failures.append(f"{label}: {problem}")
    return checks, failures


def _pair(module_info, module_input, dtype):
    """torch's module and ours from the same constructor input, ours holding torch's parameters
    (randomized first, so that the affine transform is not the identity)."""
    args, kwargs = module_input.constructor_input.args, module_input.constructor_input.kwargs
    theirs = torch.nn.GroupNorm(*args, **kwargs).to(dtype)
    ours = groupnorm_ext.GroupNorm(*args, **kwargs).to(dtype)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in theirs.parameters():
            p.copy_(torch.rand(p.shape, generator=gen) * 2 - 0.5)
    ours.load_state_dict(theirs.state_dict())  # strict: same keys
    return theirs, ours


def check_module_samples(module_info):
    checks, failures = 0, []
    for dtype in (torch.float32, torch.float64):
        for training in (True, False):
            inputs = module_info.module_inputs_func(module_info, device="cpu", dtype=dtype, requires_grad=True,
                                                    training=training)
            for i, mi in enumerate(inputs):
                c = mi.constructor_input
                label = f"{dtype} training={training} GroupNorm{c.args}{c.kwargs or ''}"
                theirs, ours = _pair(module_info, mi, dtype)
                theirs.train(training)
                ours.train(training)
                if repr(ours) != repr(theirs):
                    failures.append(f"{label}: repr {ours!r} vs torch's {theirs!r}")
                x_theirs = mi.forward_input.args[0]
                x_ours = _detached_copy(x_theirs)
                expected, out = theirs(x_theirs), ours(x_ours)
                checks += 1
                if (msg := _close(out, expected, dtype)) is not None:
                    failures.append(f"{label}: output: {msg}")
                    continue
                grad_out = torch.randn(out.shape, dtype=dtype, generator=torch.Generator().manual_seed(i))
                mine = _grads(out, [x_ours] + list(ours.parameters()), grad_out)
                ref = _grads(expected, [x_theirs] + list(theirs.parameters()), grad_out)
                names = ["input"] + [n for n, _ in ours.named_parameters()]
                if len(mine) != len(ref):
                    failures.append(f"{label}: {len(mine)} gradients vs torch's {len(ref)}")
                for name, a, b in zip(names, mine, ref):
                    if (msg := _close(a, b, dtype, grad=True)) is not None:
                        failures.append(f"{label}: grad {name}: {msg}")
    return checks, failures


def check_module_errors(module_info):
    checks, failures = 0, []
    for e in module_info.module_error_inputs_func(module_info, device="cpu", dtype=torch.float32,
                                                  requires_grad=False, training=True):
        c, f = e.module_error_input.constructor_input, e.module_error_input.forward_input
        label = f"GroupNorm{c.args}{c.kwargs or ''} ({e.error_on.name})"
        checks += 1
        problem = _raises_as_expected(lambda: groupnorm_ext.GroupNorm(*c.args, **c.kwargs)(*f.args, **f.kwargs), e)
        if problem:
            failures.append(f"{label}: {problem}")
    return checks, failures


def main():
    (op,) = [o for o in op_db if o.name == "nn.functional.group_norm"]
    (module_info,) = [m for m in module_db if m.module_cls is torch.nn.GroupNorm]
    report = {}
    for part, fn, arg in (("op_samples", check_op_samples, op), ("op_errors", check_op_errors, op),
                          ("module_samples", check_module_samples, module_info),
                          ("module_errors", check_module_errors, module_info)):
        checks, failures = fn(arg)
        report[part] = {"checks": checks, "failures": failures}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
