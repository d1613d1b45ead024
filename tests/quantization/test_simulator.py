"""The quantization simulator on a live model: policies, caching, exact restore, gradients."""

import pytest
import torch
from torch import nn

from mpq_rl.errors import UserError
from mpq_rl.quantization.formats import TableQuantizer, precision_code
from mpq_rl.quantization.quant import quantization_error
from mpq_rl.quantization.simulator import QuantSimulator


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(8 * 6 * 6, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
    ).eval()


NAMES = ["0", "2", "5", "7"]


def uniform_policy(names, w_bits, a_bits):
    return {name: (w_bits, a_bits) for name in names}


FP, FLINT = precision_code("fp", 0), precision_code("flint", 0)


@pytest.fixture
def setup():
    model = make_model()
    torch.manual_seed(1)
    batches = [torch.rand(16, 1, 6, 6) for _ in range(4)]
    sim = QuantSimulator(model, NAMES, seed=0)
    sim.calibrate(batches)
    return model, sim, torch.cat(batches)


def test_output_error_falls_as_bits_rise(setup):
    model, sim, data = setup
    with torch.no_grad():
        reference = model(data)
        errors = []
        for bits in (2, 3, 4, 6, 8):
            with sim.applied(uniform_policy(NAMES, bits, bits)):
                errors.append(quantization_error(reference, model(data)))
    assert all(a > b for a, b in zip(errors, errors[1:], strict=False))
    assert errors[-1] < 1e-3


def test_restore_is_bit_identical_and_nothing_is_copied(setup):
    model, sim, data = setup
    params = [p for p in model.parameters()]
    originals = [p.detach().clone() for p in params]
    storage = [p.data_ptr() for p in params]
    with torch.no_grad():
        reference = model(data)
        sim.apply(uniform_policy(NAMES, 2, 2))
        assert not torch.equal(model(data), reference)
        sim.apply(uniform_policy(NAMES, 5, 3))
        sim.restore()
        assert torch.equal(model(data), reference)
    assert [p for p in model.parameters()] == params
    assert all(torch.equal(p, o) for p, o in zip(params, originals, strict=True))
    assert [p.data_ptr() for p in params] == storage


def test_weights_and_quantizers_are_computed_once_per_layer_and_bits(setup):
    model, sim, data = setup
    sim.apply(uniform_policy(NAMES, 4, 4))
    sim.apply(uniform_policy(NAMES, 8, 8))
    sim.apply(uniform_policy(NAMES, 4, 4))
    assert (sim.cached_weights, sim.cached_quantizers) == (8, 8)
    first = sim.weight("0", 4)
    sim.restore()
    sim.apply({"0": (4, 8)})
    assert model[0].weight.data_ptr() == first.data_ptr()


def test_mixed_policy_and_float_bits(setup):
    model, sim, data = setup
    with torch.no_grad():
        reference = model(data)
        with sim.applied({"0": (32, 32), "2": (16, 16), "5": (32, 32), "7": (32, 32)}):
            assert torch.equal(model(data), reference)
        with sim.applied({"0": (8, 8), "2": (2, 2), "5": (8, 8), "7": (8, 8)}):
            low_middle = quantization_error(reference, model(data))
        with sim.applied({"0": (8, 8), "2": (8, 8), "5": (8, 8), "7": (8, 8)}):
            all_eight = quantization_error(reference, model(data))
    assert low_middle > 10 * all_eight


def test_straight_through_gradients_reach_input_and_weights(setup):
    model, sim, data = setup
    x = data[:4].clone().requires_grad_(True)
    with sim.applied(uniform_policy(NAMES, 4, 4)):
        model(x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(model[i].weight.grad.abs().sum() > 0 for i in (0, 2, 5, 7))


def test_activation_bits_need_calibration_and_names_must_exist():
    model = make_model()
    sim = QuantSimulator(model, NAMES)
    sim.apply({"0": (4, 32)})
    with pytest.raises(UserError, match="calibrat"):
        sim.apply({"0": (4, 4)})
    with pytest.raises(UserError, match="'9'"):
        QuantSimulator(model, ["9"])
    with pytest.raises(UserError, match="'9'"):
        sim.apply({"9": (4, 4)})


def test_detach_removes_hooks(setup):
    model, sim, data = setup
    sim.apply(uniform_policy(NAMES, 2, 2))
    sim.detach()
    assert all(not model[i]._forward_pre_hooks for i in (0, 2, 5, 7))


def test_calibration_is_seeded(setup):
    model, sim, _ = setup
    torch.manual_seed(1)
    batches = [torch.rand(16, 1, 6, 6) for _ in range(4)]
    other = QuantSimulator(make_model(), NAMES, seed=0)
    other.calibrate(batches)
    assert other.activation("5", 3) == sim.activation("5", 3)


def test_a_second_simulator_on_the_same_layers_is_refused_until_the_first_detaches(setup):
    model, sim, _ = setup
    with pytest.raises(UserError, match="already simulated"):
        QuantSimulator(model, NAMES)
    sim.detach()
    QuantSimulator(model, NAMES).detach()


def test_prepared_candidates_equal_the_lazy_ones_bit_for_bit():
    torch.manual_seed(1)
    batches = [torch.randn(16, 1, 6, 6) for _ in range(2)]  # signed inputs to the first layer, ReLU after
    codes = [2, 3, 4, 8, 16, FP + 4, FLINT + 5]
    lazy = QuantSimulator(make_model(), NAMES, seed=0)
    prepared = QuantSimulator(make_model(), NAMES, seed=0)
    for sim in (lazy, prepared):
        sim.calibrate(batches)
    prepared.prepare({name: (codes, codes) for name in NAMES})
    assert (prepared.cached_weights, prepared.cached_quantizers) == (len(NAMES) * 6, len(NAMES) * 6)
    for name in NAMES:
        for code in codes:
            assert torch.equal(prepared.weight(name, code), lazy.weight(name, code)), (name, code)
            got, expected = prepared.activation(name, code), lazy.activation(name, code)
            if code == 16:
                assert got is None and expected is None
            elif isinstance(expected, TableQuantizer):
                assert got.scale == expected.scale and torch.equal(got.table, expected.table), (name, code)
            else:
                assert got == expected, (name, code)
    assert (prepared.cached_weights, prepared.cached_quantizers) == (lazy.cached_weights, lazy.cached_quantizers)
