"""mtrl.optim.FusedAdamW: AdamW (as torch's) in one C++ pass, with the Polyak update fused."""

import copy

import pytest
import torch

from mtrl import math as brc_math
from mtrl.optim import FusedAdamW, fused_kernel_step


def _params(seed, shapes=((2, 37, 64), (2, 1, 64), (5,), (), (3, 4, 5, 6))):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen).requires_grad_() for s in shapes]


def _set_grads(params, seed):
    gen = torch.Generator().manual_seed(seed)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 0.1


def _steps_against_torch(seed, steps, **ref_kwargs):
    """FusedAdamW + Polyak next to torch's AdamW + mtrl.math.polyak_update on equal parameters and
    gradients; yields (ours, ref, targets, ref_targets, opt, ref_opt) after every step."""
    ours, ref = _params(seed), _params(seed)
    targets = [p.detach().clone() + 0.5 for p in ours]
    ref_targets = [t.clone() for t in targets]
    opt = FusedAdamW(ours, lr=3e-3, weight_decay=1e-2)
    ref_opt = torch.optim.AdamW(ref, lr=3e-3, weight_decay=1e-2, **ref_kwargs)
    for step in range(steps):
        _set_grads(ours, step)
        _set_grads(ref, step)
        opt.step_with_polyak(targets, 0.005)
        ref_opt.step()
        brc_math.polyak_update(ref_targets, ref, 0.005)
        yield ours, ref, targets, ref_targets, opt, ref_opt


@pytest.mark.parametrize("threads", [1, 2])
def test_matches_torch_adamw_and_polyak(threads):
    torch.set_num_threads(threads)
    for ours, ref, targets, ref_targets, opt, ref_opt in _steps_against_torch(0, 7):
        for p, r in zip(ours, ref):
            torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
        for t, r in zip(targets, ref_targets):
            torch.testing.assert_close(t, r, rtol=1e-6, atol=1e-7)
    for p, r in zip(ours, ref):  # the state is AdamW's, entry for entry
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt.state[p][key], ref_opt.state[r][key], rtol=1e-5, atol=1e-8)
    torch.set_num_threads(2)


def test_state_dict_round_trips_with_torch_adamw():
    params = _params(1)
    opt = FusedAdamW(params, lr=1e-3, weight_decay=1e-4)
    _set_grads(params, 0)
    opt.step()
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(ref_params, lr=1e-3, weight_decay=1e-4, fused=True)
    ref.load_state_dict(copy.deepcopy(opt.state_dict()))  # (torch shares the step tensors)
    _set_grads(params, 1)
    _set_grads(ref_params, 1)
    opt.step()
    ref.step()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_falls_back_to_torch_where_the_kernel_does_not_apply():
    params = _params(2)
    params[2].grad = None  # torch skips parameters without gradient
    for p in params[:2] + params[3:]:
        p.grad = torch.ones_like(p)
    before = params[2].detach().clone()
    targets = [p.detach().clone() for p in params]
    opt = FusedAdamW(params, lr=1e-2, weight_decay=0.0)
    opt.step_with_polyak(targets, 0.5)
    assert torch.equal(params[2], before) and "step" not in opt.state[params[2]]
    assert float(opt.state[params[0]]["step"]) == 1.0
    torch.testing.assert_close(targets[0], params[0].detach() * 0.5 + (params[0].detach() + 1e-2) * 0.5,
                               rtol=1e-5, atol=1e-6)  # lerp toward the stepped params
    # float64 parameters: torch's path, same rule
    p64 = [torch.randn(4, dtype=torch.float64, requires_grad=True)]
    r64 = [p64[0].detach().clone().requires_grad_()]
    p64[0].grad = torch.ones(4, dtype=torch.float64)
    r64[0].grad = torch.ones(4, dtype=torch.float64)
    FusedAdamW(p64, lr=1e-3, weight_decay=1e-4).step()
    torch.optim.AdamW(r64, lr=1e-3, weight_decay=1e-4).step()
    torch.testing.assert_close(p64[0], r64[0])


def test_bad_targets_raise():
    params = _params(3)
    _set_grads(params, 0)
    opt = FusedAdamW(params, lr=1e-3, weight_decay=0.0)
    with pytest.raises(ValueError, match="targets"):
        opt.step_with_polyak([p.detach().clone() for p in params[:2]], 0.005)


def test_state_dict_step_counts_are_tensors_of_their_own():
    params = _params(4)
    opt = FusedAdamW(params, lr=1e-3, weight_decay=1e-4)
    for seed in range(2):
        _set_grads(params, seed)
        opt.step()
    state = opt.state_dict()
    for entry in state["state"].values():  # as torch's AdamW: one 0-d float32 tensor each
        step = entry["step"]
        assert step.shape == () and step.dtype == torch.float32 and float(step) == 2.0
        assert step._base is None and step.untyped_storage().nbytes() == 4
    state["state"][0]["step"].fill_(7.0)  # the dict is a snapshot of the counts
    assert float(opt.state[params[0]]["step"]) == 2.0
    assert float(opt.state_dict()["state"][0]["step"]) == 2.0


def test_loads_torch_adamw_state_and_continues_like_it():
    params = _params(5)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    ref = torch.optim.AdamW(ref_params, lr=1e-3, weight_decay=1e-4)
    _set_grads(ref_params, 0)
    ref.step()
    with torch.no_grad():  # the checkpointed parameters and optimizer state
        for p, r in zip(params, ref_params):
            p.copy_(r)
    opt = FusedAdamW(params, lr=1e-3, weight_decay=1e-4)
    opt.load_state_dict(copy.deepcopy(ref.state_dict()))
    for seed in (1, 2):
        _set_grads(params, seed)
        _set_grads(ref_params, seed)
        opt.step()
        ref.step()
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)
        assert float(opt.state[p]["step"]) == float(ref.state[r]["step"]) == 3.0


def test_unequal_step_counts_after_a_skipped_parameter_take_torchs_step():
    params = _params(6)
    ref_params = [p.detach().clone().requires_grad_() for p in params]
    opt = FusedAdamW(params, lr=1e-2, weight_decay=1e-4)
    ref = torch.optim.AdamW(ref_params, lr=1e-2, weight_decay=1e-4)
    for seed, skip in ((0, None), (1, 2), (2, None), (3, None)):  # params[2]: one step behind
        for ps, o in ((params, opt), (ref_params, ref)):
            _set_grads(ps, seed)
            if skip is not None:
                ps[skip].grad = None
            o.step()
    assert [float(opt.state[p]["step"]) for p in params] == [4.0, 4.0, 3.0, 4.0, 4.0]
    for p, r in zip(params, ref_params):
        torch.testing.assert_close(p, r, rtol=1e-6, atol=1e-7)


def test_load_state_dict_of_other_shapes_raises_and_keeps_the_state():
    # torch's fused AdamW writes a parameter's worth of elements into exp_avg/exp_avg_sq without
    # checking their size: a smaller saved state corrupted the heap (abort) on the next step.
    small = torch.ones(3, requires_grad=True)
    small_opt = FusedAdamW([small], lr=0.1, weight_decay=0.0)
    small.grad = torch.ones(3)
    small_opt.step()
    param = torch.ones(1000, requires_grad=True)
    opt = FusedAdamW([param], lr=0.1, weight_decay=0.0)
    param.grad = torch.ones(1000)
    opt.step()
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(3,\), the "
                                         r"parameter \(1000,\)"):
        opt.load_state_dict(small_opt.state_dict())
    after = opt.state_dict()
    assert torch.equal(after["state"][0]["exp_avg"], before["state"][0]["exp_avg"])
    opt.step()  # still usable


def test_step_with_a_state_of_another_shape_raises():
    param = torch.ones(3, requires_grad=True)
    opt = FusedAdamW([param], lr=0.1, weight_decay=0.0)
    param.grad = torch.ones(3)
    opt.step()
    opt.state[param]["exp_avg"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"exp_avg of parameter 0 has shape \(1,\)"):
        opt.step()


def test_expanded_gradient_steps_like_a_dense_one():
    # torch's fused AdamW (the fallback for non-dense gradients) updated only the first row of a
    # parameter whose gradient was expanded (stride 0).
    ours = torch.ones(4, 4, requires_grad=True)
    ref = torch.ones(4, 4, requires_grad=True)
    opt = FusedAdamW([ours], lr=0.1, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([ref], lr=0.1, weight_decay=0.1)
    ours.grad = torch.arange(4.0).reshape(1, 4).expand(4, 4)
    ref.grad = torch.arange(4.0).reshape(1, 4).expand(4, 4).contiguous()
    for _ in range(2):
        opt.step()
        ref_opt.step()
    torch.testing.assert_close(ours.detach(), ref.detach())


def _relaid(t, layout):
    """A copy of `t` with `layout`: "contiguous", "transposed" (dims 0 and 1 swapped in memory) or
    "sliced" (a non-dense view into a wider buffer)."""
    if layout == "transposed":
        return t.detach().t().contiguous().t()
    if layout == "sliced":
        wide = torch.zeros(t.shape[0], t.shape[1] + 3)
        wide[:, : t.shape[1]] = t.detach()
        return wide[:, : t.shape[1]]
    return t.detach().clone()


@pytest.mark.parametrize("param_layout,grad_layout,moment_layout", [
    ("contiguous", "transposed", None), ("transposed", "contiguous", None),
    ("transposed", "transposed", None), ("sliced", "contiguous", None),
    ("sliced", "sliced", None), ("contiguous", "contiguous", "transposed")])
def test_any_memory_layout_steps_like_a_contiguous_one(param_layout, grad_layout, moment_layout):
    # torch's fused AdamW kernels walk a parameter, its gradient and its moments as flat arrays:
    # with different layouts, or a non-dense parameter, they paired up different elements (0.03
    # off after three steps at lr 1e-2). The reference: torch's single-tensor AdamW on contiguous
    # copies.
    gen = torch.Generator().manual_seed(11)
    start = torch.randn(4, 6, generator=gen)
    ours = _relaid(start, param_layout).requires_grad_()
    ref = start.clone().requires_grad_()
    target, ref_target = start.clone() + 0.5, start.clone() + 0.5
    opt = FusedAdamW([ours], lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        grad = torch.randn(4, 6, generator=gen)
        ours.grad, ref.grad = _relaid(grad, grad_layout), grad.clone()
        if moment_layout is not None and step == 1:
            for key in ("exp_avg", "exp_avg_sq"):
                opt.state[ours][key] = _relaid(opt.state[ours][key], moment_layout)
        opt.step_with_polyak([target], 0.005)
        ref_opt.step()
        brc_math.polyak_update([ref_target], [ref], 0.005)
        torch.testing.assert_close(ours.detach(), ref.detach(), atol=1e-6, rtol=1e-6)
        torch.testing.assert_close(target, ref_target, atol=1e-6, rtol=1e-6)
    for key in ("exp_avg", "exp_avg_sq"):
        torch.testing.assert_close(opt.state[ours][key], ref_opt.state[ref][key])


def test_polyak_tau_outside_0_1_raises():
    param = torch.ones(3, requires_grad=True)
    opt = FusedAdamW([param], lr=0.1, weight_decay=0.0)
    param.grad = torch.ones(3)
    target = torch.zeros(3)
    for tau in (float("nan"), -0.1, 1.5):
        with pytest.raises(ValueError, match="tau must be in"):
            opt.step_with_polyak([target], tau)
    assert torch.equal(target, torch.zeros(3)) and torch.equal(param.detach(), torch.ones(3))


@pytest.mark.parametrize("cls", [torch.optim.Adam, torch.optim.AdamW])
def test_fused_kernel_step_is_torchs_fused_step_bit_for_bit(cls):
    ours, ref = _params(3), _params(3)
    kwargs = dict(lr=3e-3, betas=(0.5, 0.999), weight_decay=1e-2, fused=True)
    opt, ref_opt = cls(ours, **kwargs), cls(ref, **kwargs)
    _set_grads(ours, 0)
    assert not fused_kernel_step(opt)  # no state yet: torch's first step creates it
    assert all(len(opt.state[p]) == 0 for p in ours)
    opt.step()
    _set_grads(ref, 0)
    ref_opt.step()
    for step in range(1, 6):
        _set_grads(ours, step)
        _set_grads(ref, step)
        assert fused_kernel_step(opt)
        ref_opt.step()
        for p, r in zip(ours, ref):
            assert torch.equal(p, r)
            for key in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(opt.state[p][key], ref_opt.state[r][key])


def test_fused_kernel_step_leaves_other_cases_to_torch():
    def stepped(**kwargs):
        params = _params(4)
        _set_grads(params, 0)
        opt = torch.optim.Adam(params, **{"lr": 1e-3, "fused": True, **kwargs})
        opt.step()
        return params, opt

    for kwargs in ({"fused": False}, {"amsgrad": True}, {"maximize": True},
                   {"lr": torch.tensor(1e-3)}):
        params, opt = stepped(**kwargs)
        before = [p.detach().clone() for p in params]
        assert not fused_kernel_step(opt), kwargs
        assert all(torch.equal(p, b) for p, b in zip(params, before))
    params, opt = stepped()
    params[1].grad = None
    assert not fused_kernel_step(opt)
    params = _params(5)
    _set_grads(params, 0)
    opt = torch.optim.Adam([{"params": params[:2]}, {"params": params[2:]}], lr=1e-3, fused=True)
    opt.step()
    assert not fused_kernel_step(opt)


def test_fused_adamw_off_the_one_pass_path_is_torchs_step_bit_for_bit(monkeypatch):
    # What a CUDA agent runs (the one-pass step is CPU-only): torch's fused kernels, directly.
    monkeypatch.setattr(FusedAdamW, "_step_in_one_pass", lambda self, targets, tau: False)
    for ours, ref, targets, ref_targets, opt, ref_opt in _steps_against_torch(6, 4, fused=True):
        assert all(torch.equal(p, r) for p, r in zip(ours, ref))
        assert all(torch.equal(t, r) for t, r in zip(targets, ref_targets))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_layout_fallback_steps_right_and_leaves_fused_state():
    # The single-tensor fallback (a transposed gradient) on CUDA: the result is torch's, and a
    # first step taken there leaves the step counts on the device for the fused kernels after it.
    gen = torch.Generator().manual_seed(5)
    start = torch.randn(4, 6, generator=gen)
    ours = start.clone().cuda().requires_grad_()
    ref = start.clone().cuda().requires_grad_()
    opt = FusedAdamW([ours], lr=1e-2, weight_decay=0.1)
    ref_opt = torch.optim.AdamW([ref], lr=1e-2, weight_decay=0.1, foreach=False)
    for step in range(3):
        grad = torch.randn(4, 6, generator=gen).cuda()
        ours.grad = grad.t().contiguous().t() if step < 2 else grad.clone()  # fused at step 3
        ref.grad = grad.clone()
        opt.step()
        ref_opt.step()
        assert opt.state[ours]["step"].device == ours.device
        torch.testing.assert_close(ours.detach(), ref.detach(), atol=1e-6, rtol=1e-6)
