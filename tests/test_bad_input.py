"""The misuse catalogue: every wrong call raises a clear exception of the type torch raises for the same
misuse, and none crashes the process.

Each case is source code (so that it can run in this process or in a child): `setup` defines x, G and
optionally w, b, eps; `ref` is the torch call the expected exception type comes from (checked at test
time, so the table cannot drift from torch). Our entry points are the functional API and the two ops.

Where the expected type comes from:
  * tensor misuse (rank, C % G, num_groups <= 0, weight/bias shape, dtype or device, integer / complex /
    float8 / sparse / quantized / meta input): torch.nn.functional.group_norm. One exception:
    num_groups = 0, where F.group_norm's Python prelude dies with ZeroDivisionError (input.size(1) // 0)
    before torch checks anything; there the reference is torch.group_norm, the public binding of the
    same ATen op (RuntimeError).
  * argument-type misuse (a float num_groups, a str eps, None or a list as input...): the Python API is
    held to F.group_norm / torch.group_norm (TypeError); the raw torch.ops entry points to
    torch.ops.aten.group_norm, which goes through the same dispatcher binding as ours (RuntimeError).
"Risky" cases (other layouts and backends, meta tensors, huge num_groups) run in a child process: a crash
there is reported as a failure of that case, not of the whole test session.
"""
import json
import os
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext

ops = torch.ops.groupnorm_ext
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))

PRELUDE = """
import torch
import torch.nn.functional as F
import groupnorm_ext
ops = torch.ops.groupnorm_ext
x0 = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(0))
W, B = torch.ones(6), torch.zeros(6)
w = b = None
eps = 1e-5
"""

# entry points of ours, per family
PY_ENTRIES = {
    "functional": "groupnorm_ext.group_norm(x, G, w, b, eps)",
}
OP_ENTRIES = {
    "op_group_norm": "ops.group_norm(x, G, w, b, eps, 'identity')",
    "op_group_norm_forward": "ops.group_norm_forward(x, G, w, b, eps, 'identity')",
}
F_REF = "F.group_norm(x, G, w, b, eps)"
ATEN_BINDING_REF = "torch.group_norm(x, G, w, b, eps)"
ATEN_OP_REF = "torch.ops.aten.group_norm(x, G, w, b, eps, False)"


class Case:
    def __init__(self, id, setup, expect, ref=F_REF, words=None, risky=False, op_expect=None, op_ref=None,
                 needs_cuda=False, ops_too=True, same_message=False):
        self.id, self.setup, self.expect, self.ref, self.words = id, setup, expect, ref, words
        # the message must be torch's, word for word (code and tests written against torch match on
        # it); checked against every reference but the raw aten op's schema-parser errors
        self.same_message = same_message
        self.risky, self.needs_cuda = risky, needs_cuda
        # (entry name, code, expected type name, reference code)
        self.entries = []
        for name, code in PY_ENTRIES.items():
            self.entries.append((name, code, expect, ref))
        for name, code in OP_ENTRIES.items() if ops_too else ():
            self.entries.append((name, code, op_expect or expect, op_ref or ref))


RT, NI, TE, VE = "RuntimeError", "NotImplementedError", "TypeError", "ValueError"

CASES = [
    # ----- rank
    Case("input_1d", "x = torch.randn(6); G = 3", RT, words="2 dimensions", same_message=True),
    Case("input_0d", "x = torch.tensor(1.5); G = 1", RT, words="2 dimensions", same_message=True),
    Case("input_1d_with_affine", "x = torch.randn(6); G = 3; w, b = W, B", RT, words="2 dimensions", same_message=True),
    # ----- groups
    Case("channels_not_divisible", "x = x0; G = 4; w, b = W, B", RT, words="divisible", same_message=True),
    Case("channels_not_divisible_no_affine", "x = x0; G = 5", RT, words="divisible", same_message=True),
    Case("groups_more_than_channels", "x = x0; G = 12", RT, words="divisible", same_message=True),
    Case("zero_groups", "x = x0; G = 0; w, b = W, B", RT, ref=ATEN_BINDING_REF, words="num.groups", same_message=True),
    # the functional API only: torch.group_norm and the ops normalize a lone value to 0 (= bias)
    Case("one_value_per_group", "x = torch.randn(1, 10, 1); G = 10", VE, words="more than 1 value", ops_too=False, same_message=True),
    Case("one_value_per_group_2d", "x = torch.randn(1, 4); G = 4; w, b = torch.ones(4), torch.zeros(4)", VE,
         words="more than 1 value", ops_too=False, same_message=True),
    Case("negative_groups", "x = x0; G = -1; w, b = W, B", RT, words="num.groups", same_message=True),
    Case("negative_groups_dividing", "x = x0; G = -3", RT, words="num.groups", same_message=True),
    Case("groups_2_62", "x = x0; G = 2 ** 62", RT, words="divisible", risky=True),
    Case("groups_int64_max", "x = x0; G = 2 ** 63 - 1", RT, words="divisible", risky=True),
    Case("groups_int64_min", "x = x0; G = -2 ** 63", RT, words="num.groups", risky=True),
    # ----- weight / bias shape
    Case("weight_too_long", "x = x0; G = 3; w, b = torch.ones(7), B", RT, words="weight", same_message=True),
    Case("weight_too_short", "x = x0; G = 3; w = torch.ones(3)", RT, words="weight", same_message=True),
    Case("weight_2d_Cx1", "x = x0; G = 3; w = torch.ones(6, 1)", RT, words="weight", same_message=True),
    Case("weight_2d_2x3", "x = x0; G = 3; w = torch.ones(2, 3)", RT, words="weight", same_message=True),
    Case("weight_0d", "x = x0; G = 3; w = torch.tensor(1.0)", RT, words="weight", same_message=True),
    Case("weight_empty", "x = x0; G = 3; w = torch.ones(0)", RT, words="weight", same_message=True),
    Case("bias_too_long", "x = x0; G = 3; w, b = W, torch.zeros(12)", RT, words="Expected bias to be a vector of size equal to the number of channels in input"),
    Case("bias_too_short", "x = x0; G = 3; b = torch.zeros(5)", RT, words="Expected bias to be a vector of size equal to the number of channels in input"),
    Case("bias_2d_Cx1", "x = x0; G = 3; b = torch.zeros(6, 1)", RT, words="Expected bias to be a vector of size equal to the number of channels in input"),
    # ----- weight / bias dtype
    Case("weight_float64_for_float32", "x = x0; G = 3; w = W.double()", RT, words="weight"),
    Case("weight_float16_for_float32", "x = x0; G = 3; w, b = W.half(), B.half()", RT, words="weight"),
    Case("bias_float64_for_float32", "x = x0; G = 3; w, b = W, B.double()", RT, words="bias"),
    Case("weight_float64_for_bfloat16", "x = x0.bfloat16(); G = 3; w, b = W.double(), B.double()", RT, words="weight"),
    Case("weight_bfloat16_for_float16", "x = x0.half(); G = 3; w, b = W.bfloat16(), B.bfloat16()", RT, words="weight"),
    Case("weight_int64", "x = x0; G = 3; w = torch.ones(6, dtype=torch.long)", RT, words="weight"),
    # ----- weight / bias device
    Case("weight_on_meta_input_on_cpu", "x = x0; G = 3; w = W.to('meta')", RT, words="device", risky=True),
    Case("bias_on_meta_input_on_cpu", "x = x0; G = 3; b = B.to('meta')", RT, words="device", risky=True),
    Case("input_on_meta_affine_on_cpu", "x = x0.to('meta'); G = 3; w, b = W, B", RT, words="device", risky=True),
    Case("weight_on_cuda_input_on_cpu", "x = x0; G = 3; w = W.cuda()", RT, words="device", risky=True,
         needs_cuda=True),
    Case("input_on_cuda_weight_on_cpu", "x = x0.cuda(); G = 3; w = W", RT, words="device", risky=True,
         needs_cuda=True),
    # ----- input dtype
    Case("int64_input", "x = torch.arange(48).reshape(2, 6, 4); G = 3", NI, words="floating|Long"),
    Case("int32_input_with_affine", "x = torch.ones(2, 6, 4, dtype=torch.int32); G = 3; w, b = W, B", RT,
         words="floating|Int|dtype"),
    Case("uint8_input", "x = torch.ones(2, 6, 4, dtype=torch.uint8); G = 3", NI, words="floating|Byte"),
    Case("int8_input", "x = torch.ones(2, 6, 4, dtype=torch.int8); G = 3", NI, words="floating|Char"),
    Case("bool_input", "x = torch.ones(2, 6, dtype=torch.bool); G = 3", NI, words="floating|Bool"),
    Case("complex64_input", "x = torch.randn(2, 6, 4, dtype=torch.complex64); G = 3", NI,
         words="floating|Complex"),
    Case("complex128_input_with_affine",
         "x = torch.randn(2, 6, 4, dtype=torch.complex128); G = 3; w = torch.ones(6, dtype=torch.complex128)",
         NI, words="floating|Complex"),
    Case("float8_e4m3_input", "x = x0.to(torch.float8_e4m3fn); G = 3", NI, words="floating|Float8", risky=True),
    Case("float8_e5m2_input", "x = x0.to(torch.float8_e5m2); G = 3", NI, words="floating|Float8", risky=True),
    # ----- layouts / backends
    Case("sparse_coo_input", "x = x0.to_sparse(); G = 3", NI, risky=True),
    Case("sparse_coo_input_with_affine", "x = x0.to_sparse(); G = 3; w, b = W, B", NI, risky=True),
    Case("sparse_csr_input", "x = torch.randn(6, 6).to_sparse_csr(); G = 3", NI, risky=True),
    Case("sparse_weight", "x = x0; G = 3; w = W.to_sparse()", NI, risky=True),
    Case("quantized_input", "x = torch.quantize_per_tensor(x0, 0.1, 0, torch.quint8); G = 3", NI, risky=True),
    Case("mkldnn_input", "x = torch.randn(2, 6, 4, 4).to_mkldnn(); G = 3", RT, risky=True),
    Case("nested_input", "x = torch.nested.nested_tensor([torch.randn(6, 4), torch.randn(6, 5)]); G = 3", RT,
         risky=True),
    # ----- meta tensors (supported: see test_meta_input_works_like_torch); misuse on meta still raises
    Case("meta_input_channels_not_divisible", "x = x0.to('meta'); G = 4", RT, words="divisible", risky=True, same_message=True),
    Case("meta_input_1d", "x = torch.randn(6, device='meta'); G = 3", RT, words="2 dimensions", risky=True, same_message=True),
    Case("meta_input_zero_groups", "x = x0.to('meta'); G = 0", RT, ref=ATEN_BINDING_REF, words="num.groups",
         risky=True, same_message=True),
    Case("meta_int64_input", "x = torch.ones(2, 6, 4, dtype=torch.long, device='meta'); G = 3", RT, risky=True),
    Case("meta_weight_wrong_size", "x = x0.to('meta'); G = 3; w = torch.ones(7, device='meta')", RT,
         words="weight", risky=True, same_message=True),
    # ----- argument types: Python API -> TypeError, ops -> what the dispatcher binding raises (RuntimeError)
    Case("num_groups_float", "x = x0; G = 2.0", TE, ref="torch.group_norm(x, G, w, b, eps)", words="num.groups",
         op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    Case("num_groups_none", "x = x0; G = None", TE, ref="torch.group_norm(x, G, w, b, eps)", words="num.groups",
         op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    Case("num_groups_str", "x = x0; G = '3'", TE, words="num_groups|str", op_expect=RT, op_ref=ATEN_OP_REF),
    Case("eps_str", "x = x0; G = 3; eps = 'a'", TE, words="eps", op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    Case("eps_none", "x = x0; G = 3; eps = None", TE, words="eps", op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    Case("weight_list", "x = x0; G = 3; w = [1.0] * 6", TE, words="weight", op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    # (the raw ops are not held to anything here: torch.ops.aten.group_norm itself fails with an IndexError)
    Case("input_none", "x = None; G = 3", TE, ref="torch.group_norm(x, G, w, b, eps)", words="input", risky=True,
         ops_too=False, same_message=True),
    Case("input_list", "x = [[1.0] * 6] * 2; G = 3", TE, ref="torch.group_norm(x, G, w, b, eps)", words="input",
         op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
    Case("input_numpy", "x = x0.numpy(); G = 3", TE, ref="torch.group_norm(x, G, w, b, eps)", words="input",
         op_expect=RT, op_ref=ATEN_OP_REF, same_message=True),
]
# torch rejects no channels and an empty spatial size from 2.14 on (earlier versions return an empty
# output, as ours does when built against them: test_empty_channels_or_spatial_like_torch)
if torch.torch_version.TorchVersion(torch.__version__) >= (2, 14):
    CASES += [
        Case("zero_channels", "x = torch.randn(2, 0, 4); G = 3", RT, words="channels", same_message=True),
        Case("zero_channels_empty_batch", "x = torch.randn(0, 0, 4); G = 1", RT, words="channels", same_message=True),
        Case("spatial_size_zero", "x = torch.randn(2, 6, 0, 3); G = 3", RT, words="HxW", same_message=True),
        Case("spatial_size_zero_3d", "x = torch.randn(2, 6, 0); G = 3; w, b = W, B", RT, words="HxW", same_message=True),
        Case("spatial_size_zero_empty_batch", "x = torch.randn(0, 6, 0); G = 3", RT, words="HxW", same_message=True),
    ]
CASE_BY_ID = {c.id: c for c in CASES}


@pytest.mark.parametrize("shape,G", [((2, 0, 4), 3), ((0, 0, 4), 1), ((2, 6, 0, 3), 3), ((2, 6, 0), 3),
                                     ((0, 6, 0), 3)], ids=str)
def test_empty_channels_or_spatial_like_torch(shape, G):
    """Whatever the installed torch does with no channels or an empty spatial size (2.14 raises,
    2.13 returns an empty output), ours does, forward and backward."""
    x = torch.randn(shape, requires_grad=True)
    try:
        expected = F.group_norm(x, G)
    except RuntimeError:
        with pytest.raises(RuntimeError):
            groupnorm_ext.group_norm(x, G)
        return
    out = groupnorm_ext.group_norm(x, G)
    assert out.shape == expected.shape
    (gx,) = torch.autograd.grad(out.sum(), x)
    assert gx.shape == x.shape


# ------------------------------------------------------------------------------------------------- runner
def _outcome(code, ns):
    """What running `code` in namespace `ns` does: ("raised", [MRO names], message) or ("returned", repr)."""
    try:
        r = eval(code, ns)
    except Exception as e:  # noqa: BLE001
        return ["raised", [k.__name__ for k in type(e).__mro__], str(e)]
    if isinstance(r, torch.Tensor):
        desc = f"a {r.device} tensor {tuple(r.shape)} {r.dtype}"
    elif isinstance(r, (tuple, list)):
        desc = "(" + ", ".join(f"{t.device} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else repr(t) for t in r) + ")"
    else:
        desc = repr(r)
    return ["returned", desc]


def evaluate_case(case):
    """{"ref:<entry>": outcome, "<entry>": outcome} for one case, in this process."""
    ns = {}
    exec(PRELUDE, ns)
    exec(case.setup, ns)
    out = {}
    for name, code, _, ref in case.entries:
        out["ref:" + name] = _outcome(ref, ns)
        out[name] = _outcome(code, ns)
    return out


_CHILD = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {tests!r})
    import test_bad_input as t
    for cid in sys.argv[1:]:
        print(json.dumps(["start", cid]), flush=True)
        print(json.dumps(["done", cid, t.evaluate_case(t.CASE_BY_ID[cid])]), flush=True)
""")


def evaluate_in_children(ids):
    """Run cases in child processes; a case whose child dies is recorded as ("crashed", details) and the
    remaining cases go to a fresh child."""
    results, todo = {}, list(ids)
    while todo:
        proc = subprocess.run([sys.executable, "-c", _CHILD.format(tests=TESTS_DIR)] + todo,
                              capture_output=True, text=True, timeout=600)
        started = None
        for line in proc.stdout.splitlines():
            try:
                msg = json.loads(line)
            except ValueError:
                continue
            if msg[0] == "start":
                started = msg[1]
            elif msg[0] == "done":
                results[msg[1]] = msg[2]
                started = None
        todo = [c for c in todo if c not in results]
        if not todo:
            break
        culprit = started or todo[0]
        results[culprit] = {"crashed": f"child exited with {proc.returncode} while running this case; "
                                       f"stderr tail: {proc.stderr[-1500:]}"}
        todo.remove(culprit)
    return results


@pytest.fixture(scope="module")
def risky_results():
    ids = [c.id for c in CASES if c.risky and not (c.needs_cuda and not torch.cuda.is_available())]
    return evaluate_in_children(ids)


def check(case, result):
    assert "crashed" not in result, f"{case.id}: the process crashed: {result['crashed']}"
    problems = []
    for name, _, expect, ref in case.entries:
        r, o = result["ref:" + name], result[name]
        if r[0] != "raised":
            problems.append(f"[table] torch reference {ref!r} for {name} gave {r[:2]}, the table expects {expect}")
            continue
        if expect not in r[1]:
            # The table is written for the pinned torch; another release may raise another
            # type for the same misuse (2.13 raises RuntimeError for sparse input where
            # 2.14 raises NotImplementedError): the rule is "what torch raises".
            expect = r[1][0]
        if o[0] != "raised":
            problems.append(f"{name}: no exception, returned {o[1]} (torch raises {r[1][0]}: {r[2][:120]!r})")
        elif expect not in o[1]:
            problems.append(f"{name}: raised {o[1][0]} ({o[2][:160]!r}), torch raises {expect} ({r[2][:120]!r})")
        elif not o[2].strip():
            problems.append(f"{name}: {o[1][0]} with an empty message")
        elif case.words and not re.search(case.words, o[2]):
            problems.append(f"{name}: message {o[2][:160]!r} does not name the problem ({case.words!r})")
        elif case.same_message and ref != ATEN_OP_REF and o[2] != r[2]:
            problems.append(f"{name}: message {o[2][:200]!r} is not torch's {r[2][:200]!r}")
    assert not problems, f"{case.id}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in CASES if not c.risky])
def test_misuse_raises_like_torch(case):
    check(case, evaluate_case(case))


@pytest.mark.parametrize("case", [
    pytest.param(c, id=c.id, marks=[pytest.mark.skipif(c.needs_cuda and not torch.cuda.is_available(),
                                                       reason="needs a CUDA device")])
    for c in CASES if c.risky])
def test_risky_misuse_raises_like_torch_in_a_child_process(case, risky_results):
    check(case, risky_results[case.id])


# ------------------------------------------------------------------------------------------ other entries
def test_meta_input_works_like_torch():
    """Meta tensors are supported (the fake kernels): same shape, dtype and device as torch's result."""
    x = torch.randn(2, 6, 4, 3).to("meta").contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(6, device="meta"), torch.zeros(6, device="meta")
    out = groupnorm_ext.group_norm(x, 3, w, b)
    ref = F.group_norm(x, 3, w, b)
    assert (out.device, out.shape, out.dtype) == (ref.device, ref.shape, ref.dtype)
    o, mean, rstd = ops.group_norm_forward(x, 3, w, b, 1e-5, "identity")
    assert o.device.type == "meta" and mean.shape == (2, 3) and rstd.shape == (2, 3)


@pytest.mark.parametrize("activation", ["swish", "SiLU", "gelu_erf", "", "Identity", "identity "])
def test_unknown_activation(activation):
    """No torch analogue; the spec says RuntimeError naming the activation, from every entry point."""
    x = torch.randn(2, 6, 4)
    for call in (lambda: groupnorm_ext.group_norm(x, 3, None, None, 1e-5, activation),
                 lambda: ops.group_norm(x, 3, None, None, 1e-5, activation),
                 lambda: ops.group_norm_forward(x, 3, None, None, 1e-5, activation)):
        with pytest.raises(RuntimeError, match="activation"):
            call()


def test_activation_of_the_wrong_type_is_a_type_error():
    """Like any argument of the wrong type in torch's Python API (cf. eps_str)."""
    with pytest.raises(TypeError, match="activation"):
        groupnorm_ext.group_norm(torch.randn(2, 6, 4), 3, None, None, 1e-5, 3)


# Scalars torch's argument parser converts (or refuses): num_groups takes any integer with __index__ but not
# bool / float / tensors that are not 0-dim integers; eps takes any real number, bool included, or a 0-dim
# tensor. Ours must accept and refuse the same, and compute the same values.
SCALAR_ARGUMENTS = [
    pytest.param(np.int64(3), 1e-5, id="numpy-int64-groups"),
    pytest.param(np.int32(3), 1e-5, id="numpy-int32-groups"),
    pytest.param(torch.tensor(3), 1e-5, id="0-dim-integer-tensor-groups"),
    pytest.param(True, 1e-5, id="bool-groups"),
    pytest.param(3.0, 1e-5, id="float-groups"),
    pytest.param(torch.tensor(3.0), 1e-5, id="float-tensor-groups"),
    pytest.param(torch.tensor([3]), 1e-5, id="1-d-tensor-groups"),
    pytest.param(3, np.float32(1e-3), id="numpy-float32-eps"),
    pytest.param(3, np.int32(1), id="numpy-int-eps"),
    pytest.param(3, True, id="bool-eps"),
    pytest.param(3, torch.tensor(1e-3), id="0-dim-tensor-eps"),
    pytest.param(3, torch.tensor([1e-3]), id="1-d-tensor-eps"),
    pytest.param(3, None, id="none-eps"),
    pytest.param(3, 1 + 2j, id="complex-eps"),
]


@pytest.mark.parametrize("groups,eps", SCALAR_ARGUMENTS)
def test_scalar_arguments_convert_like_torch(groups, eps):
    x = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(5))
    try:
        expected = F.group_norm(x, groups, None, None, eps)
    except Exception as e:  # noqa: BLE001  (whatever torch raises, ours must raise the same kind)
        with pytest.raises(type(e)):
            groupnorm_ext.group_norm(x, groups, None, None, eps)
        return
    torch.testing.assert_close(groupnorm_ext.group_norm(x, groups, None, None, eps), expected)


# module constructor / forward misuse, against torch.nn.GroupNorm
MODULE_CASES = [
    ("channels_not_divisible", lambda M: M(4, 6)),
    ("zero_groups", lambda M: M(0, 6)),
    ("negative_groups_forward", lambda M: M(-1, 6)(torch.randn(2, 6, 4))),
    ("negative_groups_dividing_forward", lambda M: M(-3, 6)(torch.randn(2, 6, 4))),
    ("wrong_channel_count_input", lambda M: M(3, 6)(torch.randn(2, 9, 4))),
    ("input_1d", lambda M: M(1, 6)(torch.randn(6))),
    ("integer_input", lambda M: M(3, 6)(torch.ones(2, 6, 4, dtype=torch.long))),
    ("float64_input_float32_module", lambda M: M(3, 6)(torch.randn(2, 6, 4, dtype=torch.float64))),
    ("eps_str", lambda M: M(3, 6, eps="a")(torch.randn(2, 6, 4))),
]


@pytest.mark.parametrize("name,build", [pytest.param(n, f, id=n) for n, f in MODULE_CASES])
def test_module_misuse_raises_like_torch(name, build):
    with pytest.raises(Exception) as theirs:
        build(torch.nn.GroupNorm)
    try:
        build(groupnorm_ext.GroupNorm)
    except Exception as e:  # noqa: BLE001
        ours = e
    else:
        pytest.fail(f"{name}: no exception (torch.nn.GroupNorm raises {theirs.type.__name__}: {theirs.value})")
    assert isinstance(ours, theirs.type), (
        f"{name}: raised {type(ours).__name__} ({ours}), torch.nn.GroupNorm raises {theirs.type.__name__} ({theirs.value})")


# group_norm_backward misuse, against torch.ops.aten.native_group_norm_backward
def _bwd_args():
    x = torch.randn(2, 6, 4)
    _, mean, rstd = ops.group_norm_forward(x, 3, None, None, 1e-5, "identity")
    return x, mean, rstd


BACKWARD_CASES = [
    ("grad_out_wrong_shape", lambda x, m, r: (torch.ones(2, 6, 3), x, m, r, [True, False, False])),
    ("grad_out_wrong_dtype", lambda x, m, r: (torch.ones(2, 6, 4, dtype=torch.float64), x, m, r, [True, False, False])),
    ("mean_wrong_shape", lambda x, m, r: (torch.ones(2, 6, 4), x, m[:, :2], r, [True, False, False])),
    ("mean_wrong_dtype", lambda x, m, r: (torch.ones(2, 6, 4), x, m.double(), r, [True, False, False])),
    ("output_mask_too_short", lambda x, m, r: (torch.ones(2, 6, 4), x, m, r, [True, False])),
    ("grad_out_on_meta", lambda x, m, r: (torch.ones(2, 6, 4, device="meta"), x, m, r, [True, False, False])),
    ("mean_on_meta", lambda x, m, r: (torch.ones(2, 6, 4), x, m.to("meta"), r, [True, False, False])),
]


@pytest.mark.parametrize("name,make", [pytest.param(n, f, id=n) for n, f in BACKWARD_CASES])
def test_backward_op_misuse_raises_like_torch(name, make):
    x, m, r = _bwd_args()
    gy, xx, mm, rr, mask = make(x, m, r)
    with pytest.raises(Exception) as theirs:
        torch.ops.aten.native_group_norm_backward(gy, xx, mm, rr, None, 2, 6, 4, 3, mask)
    with pytest.raises(Exception) as ours:
        ops.group_norm_backward(gy, xx, mm, rr, None, None, 3, "identity", mask)
    assert isinstance(ours.value, theirs.type), (
        f"{name}: raised {ours.type.__name__} ({ours.value}), torch raises {theirs.type.__name__} ({theirs.value})")


def test_zero_groups_is_caught_as_either_of_torchs_exceptions():
    """num_groups = 0: F.group_norm raises ZeroDivisionError (its Python prelude divides by it),
    torch.group_norm RuntimeError; code written against either catches ours, whose message is
    torch.group_norm's."""
    x = torch.randn(2, 6, 4)
    with pytest.raises(Exception) as functional:
        F.group_norm(x, 0)
    with pytest.raises(Exception) as binding:
        torch.group_norm(x, 0)
    with pytest.raises(Exception) as ours:
        groupnorm_ext.group_norm(x, 0)
    assert isinstance(ours.value, functional.type) and isinstance(ours.value, binding.type), (
        type(ours.value).__mro__, functional.type, binding.type)
    assert str(ours.value) == str(binding.value)
    # the raw op raises what torch's op raises
    with pytest.raises(RuntimeError, match="num groups"):
        torch.ops.groupnorm_ext.group_norm(x, 0, None, None, 1e-5, "identity")
