"""Mixed precision that keeps the density exact (issue 12); the per-transform check is
``test_contract.test_exact_under_bf16_autocast``."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import pyro_flows
from pyro_flows import FlowModel
from pyro_flows.precision import PRECISIONS, autocast, full_precision, same_autocast

from helpers import perturb


def _glow(**kwargs):
    torch.manual_seed(0)
    model = FlowModel.build("glow", (1, 8, 8), data_levels=256, levels=2, steps=2,
                            hidden_channels=16, **kwargs)
    return perturb(model, scale=0.05, seed=1)


def test_precision_names_and_errors():
    assert PRECISIONS == ("fp32", "bf16-mixed", "fp16-mixed")
    with autocast("fp32", "cpu"):
        assert not torch.is_autocast_enabled("cpu")
    for name, dtype in [("bf16-mixed", torch.bfloat16), ("fp16-mixed", torch.float16)]:
        with autocast(name, torch.device("cpu")):
            assert torch.is_autocast_enabled("cpu")
            assert torch.get_autocast_dtype("cpu") == dtype
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("bfloat16")
    with pytest.raises(ValueError, match="use precision='fp32' there"):
        autocast("bf16-mixed", "meta")


def test_fp16_mixed_step_with_its_grad_scaler():
    """What fit(..., precision="fp16-mixed") does: the loss under autocast, backward and the
    step through the scaler; the parameters move and stay finite."""
    model = _glow()
    scaler = pyro_flows.precision.grad_scaler("fp16-mixed", "cpu")
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    data = torch.randint(0, 256, (8, 1, 8, 8)).float()
    for _ in range(30):  # the scaler skips the steps whose scaled gradients overflow float16
        opt.zero_grad()
        with autocast("fp16-mixed", "cpu"):
            loss = -model.log_prob(data).mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    assert scaler.get_scale() < 2.0**16  # it did have to back off
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    with pytest.raises(ValueError, match="precision must be one of"):
        pyro_flows.precision.grad_scaler("half")


def test_full_precision_and_same_autocast():
    x = torch.randn(2, 3)
    lin = nn.Linear(3, 3)
    assert lin(x).dtype == torch.float32
    with autocast("bf16-mixed"):
        assert lin(x).dtype == torch.bfloat16
        with full_precision(x):
            assert lin(x).dtype == torch.float32
        again = same_autocast(x)
    with again:
        assert lin(x).dtype == torch.bfloat16
    with autocast("bf16-mixed"), same_autocast(x):  # captured outside autocast: off
        pass
    plain = same_autocast(x)
    with autocast("bf16-mixed"), plain:
        assert lin(x).dtype == torch.float32


def test_naive_autocast_breaks_exactness_of_glow():
    """What autocast does to a flow whose invertible arithmetic is not kept in float32: here
    the 1x1 convolution's W and W^-1 each rounded to bfloat16, so the inverse is no longer the
    inverse. The exact version (pyro-flows' own) round-trips to float32 rounding."""
    model = _glow()
    x = torch.randn(4, 1, 8, 8)
    t = model.transforms[0].with_cache(0)
    conv = t.levels[0][0].parts[1]
    w = conv._matrices(inverse=False)[0]
    w_inv = conv._matrices(inverse=True)[0]
    naive = (w.bfloat16().float() @ w_inv.bfloat16().float() - torch.eye(len(w))).abs().max()
    assert naive > 1e-3  # what a bf16 matmul of W and of W^-1 would give
    with autocast("bf16-mixed"):
        back = t(t.inv(x))  # data -> latent -> data, the direction a density takes
    assert (back - x).abs().max() < 1e-4


def test_conditioners_do_run_in_low_precision():
    """Exactness must not come from quietly turning autocast off: the coupling nets compute in
    bfloat16 under bf16-mixed (their first layer too, on two-term splits of its input and
    weights, tested below); the one-layer split priors stay float32."""
    model = _glow()
    glow = model.transforms[0]
    nets = [m for m in glow.modules() if isinstance(m, pyro_flows.nn.ConvNet)]
    width = nets[0].conv_hidden.out_channels
    hidden, priors = [], set()
    handles = [m.register_forward_hook(lambda m, i, out: priors.add(out.dtype)) for m in glow.priors]

    def pack(t):  # what autograd keeps of the hidden layers: (3 images x pixels, channels)
        if t.shape in [(3 * 16, width), (3 * 4, width)]:  # the 4x4 and 2x2 levels
            hidden.append(t.dtype)
        return t
    with autocast("bf16-mixed"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        lp = model.log_prob(torch.randint(0, 256, (3, 1, 8, 8)).float())
    for h in handles:
        h.remove()
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    assert priors == {torch.float32}
    assert len(hidden) >= 2 * len(nets) and set(hidden) == {torch.bfloat16}


@pytest.mark.parametrize("size", [2, 4, 8], ids=["as-image-maps", "as-matmuls", "as-convolutions"])
def test_conv_net_hidden_layers_run_in_bfloat16(size):
    """Every way a ConvNet computes (dense maps of a 2x2 image, matrix products over the pixels
    of a small image, convolutions otherwise) keeps its hidden activations in bfloat16 under
    bf16-mixed, and agrees with the float32 net to bfloat16 rounding."""
    torch.manual_seed(0)
    net = pyro_flows.nn.ConvNet(2, 4, hidden_channels=16)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(8, 2, size, size, requires_grad=True)
    hidden = []

    def pack(t):
        if t.numel() == 8 * size * size * 16:
            hidden.append(t.dtype)
        return t
    with autocast("bf16-mixed"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = net(x)
    exact = net(x)
    assert len(hidden) >= 2 and set(hidden) == {torch.bfloat16}
    err = (out.float() - exact).abs().max() / exact.abs().max()
    assert 2**-16 < err < 2**-5  # rounded like bfloat16 (8 bits), not like float32


def test_conv_first_layer_runs_in_bfloat16_on_16_bit_splits():
    """Glow's first conditioner layer under bf16-mixed: one bfloat16 convolution over
    ``x_hi, x_lo`` and ``W_hi, W_lo`` (about 16 significant bits each), so its output is the
    float32 layer's up to bfloat16 rounding of the output, and so are its gradients; without
    autocast it is the float32 layer itself."""
    torch.manual_seed(0)
    net = pyro_flows.nn.ConvNet(3, 4, hidden_channels=16)
    x = (3 + torch.randn(8, 3, 6, 6)).requires_grad_()
    hi, lo = pyro_flows.nn._two_bfloat16_terms(x.detach())
    assert hi.dtype == lo.dtype == torch.bfloat16
    err = (hi.float() + lo.float() - x).abs().max() / x.abs().max()
    assert err < 2**-15 < (hi.float() - x).abs().max() / x.abs().max()

    weight = torch.randn(8, 16, 6, 6)
    exact = net.conv_in(x)
    gx, gw = torch.autograd.grad((exact * weight).sum(), [x, net.conv_in.weight])
    with autocast("bf16-mixed"):
        out = net.conv_in(x)
    assert out.dtype == torch.bfloat16
    bx, bw = torch.autograd.grad((out.float() * weight).sum(), [x, net.conv_in.weight])
    # bfloat16 keeps 8 significant bits: its rounding is up to 2^-9 of a value.
    assert ((out.float() - exact).abs() <= 2**-8 * exact.abs() + 1e-3).all()
    assert (bx - gx).norm() / gx.norm() < 1e-2 and (bw - gw).norm() / gw.norm() < 1e-2
    plain = torch.nn.functional.conv2d(x, net.conv_in.weight, net.conv_in.bias, padding=1)
    assert torch.equal(net.conv_in(x), plain)  # no autocast: a float32 Conv2d


def test_dense_conditioners_read_their_input_in_float32():
    net = pyro_flows.nn.dense_net(3, [2, 2], (16, 16))
    assert isinstance(net.layers[0], pyro_flows.nn.Float32InputLinear)
    assert list(net.state_dict()) == ["layers.0.weight", "layers.0.bias", "layers.1.weight",
                                      "layers.1.bias", "layers.2.weight", "layers.2.bias"]
    with autocast("bf16-mixed"):
        h = net.layers[0](torch.randn(4, 3))
        out = net(torch.randn(4, 3))
    assert h.dtype == torch.float32 and out[0].dtype == torch.bfloat16


def test_memory_efficient_backward_recomputes_in_the_forwards_precision():
    """Memory-saving backprop reruns the blocks in backward, which the caller runs outside the
    autocast region: the rerun must use bf16 conditioners as the forward did, or the rebuilt
    inputs and the gradients would belong to another map."""
    x = torch.randint(0, 256, (4, 1, 8, 8)).float()
    grads = []
    for memory_efficient in (False, True):
        model = _glow(memory_efficient=memory_efficient)
        torch.manual_seed(2)  # the same dequantization noise
        with autocast("bf16-mixed"):
            loss = -model.log_prob(x.clone()).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # The rebuilt inputs match the forward's to float32 rounding, which now and then tips one
    # bfloat16 rounding inside a conditioner the other way: a gradient entry or two then differs
    # by about 2^-9, which is why this compares the whole gradient.
    assert (grads[1] - grads[0]).norm() <= 1e-4 * grads[0].norm()
    assert torch.isclose(grads[1], grads[0], rtol=1e-3, atol=1e-4).float().mean() > 0.999


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("precision", ["bf16-mixed", "fp16-mixed"])
def test_exact_under_cuda_autocast(precision):
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    model = _glow().cuda()
    t = model.transforms[0].with_cache(0)
    x = torch.randn(8, 1, 8, 8, device="cuda")
    with autocast(precision, "cuda"):
        z = t.inv(x)
        ladj = t.log_abs_det_jacobian(z, x)
        back = t(z)
        lp = model.log_prob(torch.randint(0, 256, (8, 1, 8, 8), device="cuda").float())
    assert z.dtype == ladj.dtype == lp.dtype == torch.float32
    assert (back - x).abs().max() < 1e-3
    assert torch.isfinite(lp).all()
    data = torch.randint(0, 256, (4, 1, 8, 8), device="cuda").float()
    grads = []
    for memory_efficient in (False, True):
        m = _glow(memory_efficient=memory_efficient).cuda()
        torch.manual_seed(2)
        with autocast(precision, "cuda"):
            loss = -m.log_prob(data).mean()
        loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in m.parameters()]))
    assert torch.allclose(grads[1], grads[0], rtol=1e-2, atol=1e-3)


def _nll(model, precision, test) -> float:
    torch.manual_seed(1)  # the same dequantization noise every time
    with torch.no_grad(), autocast(precision, test.device):
        return -model.log_prob(test).mean().item()


def _test_nll(make, train, test, **fit_kwargs) -> dict[str, float]:
    """Test NLL after the same ``fit(..., precision=...)`` in fp32 and in bf16-mixed, and
    before it (``"start"``)."""
    nll = {}
    for precision in ("fp32", "bf16-mixed"):
        torch.manual_seed(0)
        model = make()
        pyro_flows.initialize(model, train[:256])
        nll["start"] = _nll(model, "fp32", test)
        # The weights each precision's arithmetic reaches: fit's default weight average would
        # compare two averages over the whole run instead (1,200 steps here at decay 0.999).
        pyro_flows.fit(model, train, progress=False, seed=0, precision=precision,
                       ema_decay=None, **fit_kwargs)
        nll[precision] = _nll(model, precision, test)
    return nll


def _assert_close(nll, learned: float):
    """Within 0.5 % of fp32, after a fit that lowered the test NLL by ``learned`` nats."""
    fp32, bf16 = nll["fp32"], nll["bf16-mixed"]
    assert nll["start"] - fp32 > learned, nll
    assert abs(bf16 - fp32) <= 0.005 * abs(fp32), nll


@pytest.mark.slow
def test_bf16_fit_matches_fp32_on_a_2d_toy():
    train = pyro_flows.data.toy("two_moons", 4096, seed=0)
    test = pyro_flows.data.toy("two_moons", 2048, seed=1)
    _assert_close(_test_nll(lambda: FlowModel.build("realnvp", (2,), num_layers=6,
                                                    hidden_dims=[64, 64]),
                            train, test, epochs=150, batch_size=512, lr=5e-3, warmup_steps=20),
                  learned=1.0)


def _tabular(n: int, seed: int) -> torch.Tensor:
    """Eight columns with the habits of tabular data: a skewed one, nonlinear and
    multiplicative dependencies, a correlated block."""
    g = torch.Generator().manual_seed(seed)
    e = torch.randn(n, 8, generator=g)
    a = e[:, 0]
    b = torch.sin(2 * a) + 0.2 * e[:, 1]
    c = a * b + 0.3 * e[:, 2]
    d = torch.exp(0.5 * e[:, 3]) - 1
    f = torch.tanh(c + d) + 0.2 * e[:, 4]
    mix = torch.tensor([[1.0, 0.5, 0.2], [0.0, 1.0, 0.5], [0.0, 0.0, 1.0]])
    rest = e[:, 5:] @ mix + 0.3 * a[:, None]
    return torch.cat([torch.stack([a, b, c, d, f], dim=1), rest], dim=1)


@pytest.mark.slow
def test_bf16_fit_matches_fp32_on_a_tabular_set():
    _assert_close(_test_nll(lambda: FlowModel.build("glow", (8,), num_layers=4,
                                                    hidden_dims=[64, 64]),
                            _tabular(8192, 0), _tabular(4096, 1), epochs=40, batch_size=512,
                            lr=5e-3, warmup_steps=10),
                  learned=1.5)


@pytest.mark.slow
def test_bf16_fit_matches_fp32_on_digits_glow():
    pytest.importorskip("sklearn")
    images = pyro_flows.data.load_digits_images()
    images = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))]
    train, test = images[:1400], images[1400:]
    _assert_close(_test_nll(lambda: FlowModel.build("glow", (1, 8, 8), data_levels=17, levels=2,
                                                    steps=4, hidden_channels=64),
                            train, test, epochs=4, batch_size=64, lr=3e-3, warmup_steps=10),
                  learned=20.0)


def test_fit_records_its_precision_and_refuses_to_resume_at_another(tmp_path):
    model = FlowModel.build("realnvp", (2,), num_layers=2)
    data = pyro_flows.data.two_moons(256)
    pyro_flows.fit(model, data, epochs=1, precision="bf16-mixed", checkpoint_dir=tmp_path,
                   progress=False)
    with pytest.raises(ValueError, match="precision"):
        pyro_flows.fit(FlowModel.build("realnvp", (2,), num_layers=2), data, epochs=2,
                       precision="fp32", checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(ValueError, match="precision must be one of"):
        pyro_flows.fit(model, data, epochs=1, precision="bf16", progress=False)


def test_fit_in_fp16_mixed_steps_through_its_grad_scaler():
    model = FlowModel.build("realnvp", (2,), num_layers=2)
    history = pyro_flows.fit(model, pyro_flows.data.two_moons(512), epochs=2, batch_size=128,
                             precision="fp16-mixed", progress=False)
    assert history.steps[-1] > 0 and all(map(math.isfinite, history.train_loss))
