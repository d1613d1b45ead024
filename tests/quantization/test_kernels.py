"""The compiled kernels agree with PyTorch's own definitions, bit for bit where the simulator relies on it."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mpq_rl.quantization import formats
from mpq_rl.quantization.quant import ActivationSample, QuantParams, activation_quantizers
from mpq_rl.quantization.simulator import QuantSimulator, _InferenceFakeQuant
from mpq_rl.search.metrics import Scorer

QUANTIZERS = [
    QuantParams(scale=0.05, zero_point=0, q_min=0, q_max=3),  # unsigned 2 bits
    QuantParams(scale=0.0123, zero_point=0, q_min=0, q_max=255),  # unsigned 8 bits
    QuantParams(scale=0.3, zero_point=4, q_min=0, q_max=7),  # asymmetric 3 bits
    QuantParams(scale=1e-3, zero_point=100, q_min=0, q_max=255),  # asymmetric 8 bits, narrow scale
]


def awkward_values(quantizer: QuantParams, n: int = 4099) -> torch.Tensor:
    """Values around and beyond the range, including exact ties (k + 0.5) * scale that round half to even."""
    generator = torch.Generator().manual_seed(n)
    low = (quantizer.q_min - quantizer.zero_point) * quantizer.scale
    high = (quantizer.q_max - quantizer.zero_point) * quantizer.scale
    spread = torch.empty(n).uniform_(low - 2 * abs(low) - 1, 2 * high + 1, generator=generator)
    ties = (torch.arange(-20, 300, dtype=torch.float32) + 0.5) * np.float32(quantizer.scale)
    return torch.cat([spread, ties, torch.tensor([0.0, -0.0, low, high, 1e30, -1e30])])


@pytest.mark.parametrize("quantizer", QUANTIZERS)
@pytest.mark.parametrize("shape", [(0,), (1,), (7, 3), (5, 4, 3, 2)])
def test_fast_fake_quantize_equals_the_fused_kernel_bit_for_bit(quantizer, shape):
    fast = _InferenceFakeQuant()
    values = awkward_values(quantizer)
    x = values[: int(np.prod(shape))].reshape(shape)
    with torch.no_grad():
        got = fast(quantizer, x)
    expected = torch.fake_quantize_per_tensor_affine(
        x, quantizer.scale, quantizer.zero_point, quantizer.q_min, quantizer.q_max
    )
    assert got.shape == x.shape and torch.equal(got, expected)


def test_fast_fake_quantize_on_every_awkward_value():
    fast = _InferenceFakeQuant()
    for quantizer in QUANTIZERS:
        x = awkward_values(quantizer)
        with torch.no_grad():
            assert torch.equal(fast(quantizer, x), quantizer(x))


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_non_contiguous_inputs_take_the_kernel_and_equal_the_fused_kernel_bit_for_bit(quantizer):
    values = awkward_values(quantizer)[:4096].reshape(8, 16, 32)
    cases = {
        "transposed": values.transpose(1, 2),
        "permuted": values.permute(2, 0, 1),
        "channels last": values.reshape(2, 4, 16, 32).contiguous(memory_format=torch.channels_last),
        "sliced": values[:, ::2, 3:],
        "expanded": values[:1].expand(3, -1, -1),
    }
    for name, x in cases.items():
        fast = _InferenceFakeQuant()
        with torch.no_grad():
            got = fast(quantizer, x)
        expected = quantizer(x)
        assert fast.scratch.numel() == x.numel(), f"{name}: the compiled kernel ran"
        assert torch.equal(got, expected), name
        if name in ("transposed", "permuted", "channels last"):
            assert got.stride() == x.stride(), f"{name}: the output keeps the input's layout, as the fused kernel's"


def test_fast_path_falls_back_where_it_does_not_apply():
    quantizer = QUANTIZERS[1]
    fast = _InferenceFakeQuant()
    x = torch.rand(6, 8)
    double = x.double()
    assert fast(quantizer, double).dtype == torch.float64
    leaf = x.clone().requires_grad_()
    out = fast(quantizer, leaf)
    out.sum().backward()
    assert leaf.grad is not None, "with gradients enabled the STE kernel runs"


def test_simulated_model_gives_the_same_outputs_with_and_without_autograd():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3), torch.nn.ReLU(), torch.nn.Conv2d(6, 4, 3), torch.nn.Flatten(), torch.nn.Linear(16, 5)
    ).eval()
    data = torch.randn(32, 3, 6, 6)
    simulator = QuantSimulator(model, ["0", "2", "4"], seed=0)
    simulator.calibrate([data])
    with simulator.applied({"0": (4, 3), "2": (8, 2), "4": (3, 8)}):
        with torch.no_grad():
            fast = model(data)
        slow = model(data.clone().requires_grad_())  # the fused STE kernels
    assert torch.equal(fast, slow.detach())


def test_activation_quantizers_from_calibration_round_trip_through_the_fast_path():
    sample = torch.randn(5000).relu()
    for quantizer in activation_quantizers(
        ActivationSample(sample, float(sample.min()), float(sample.max())), [2, 4, 8], "mse", 99.99
    ):
        with torch.no_grad():
            assert torch.equal(_InferenceFakeQuant()(quantizer, sample), quantizer(sample))


@pytest.mark.parametrize(
    ("name", "bits", "signed"), [("fp", 4, True), ("fp", 8, False), ("flint", 3, True), ("flint", 6, False)]
)
def test_table_kernel_equals_bucketize_bit_for_bit(name, bits, signed):
    code = formats.precision_code(name, bits)
    table = formats.value_table(code, signed)
    quantizer = formats.TableQuantizer(0.0371, table, code)
    generator = torch.Generator().manual_seed(bits)
    top = float(table[-1]) * quantizer.scale
    spread = torch.empty(20000).uniform_(-1.5 * top, 1.5 * top, generator=generator)
    midpoints = (table[1:] + table[:-1]) * 0.5  # exact ties, which round to the smaller value
    special = torch.tensor([0.0, -0.0, 1e30, -1e30, float("inf"), float("-inf"), float("nan")])
    x = torch.cat([spread, midpoints * np.float32(quantizer.scale), special])
    with torch.no_grad():
        got = _InferenceFakeQuant()(quantizer, x)
    expected = formats.fake_quantize(x, quantizer.scale, table)
    assert torch.equal(got, expected)  # NaN too: bucketize and the kernel both put it past the last midpoint


def test_scores_pick_the_first_of_tied_maxima_and_floor_zero_norms():
    reference = torch.tensor([[1.0, 3.0, 3.0], [2.0, 2.0, 0.0], [0.0, 0.0, 1.0]])
    outputs = torch.tensor([[3.0, 3.0, 1.0], [0.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    targets = torch.tensor([0, 0, 2])
    metrics = Scorer(reference, targets)(outputs)
    assert metrics["top1"] == pytest.approx(3 / 3)  # argmax of [3, 3, 1] and of zeros is 0, as in torch
    assert metrics["agreement"] == pytest.approx(2 / 3)  # reference rows pick 1, 0, 2
    cosines = F.cosine_similarity(outputs.double(), reference.double(), eps=1e-8)
    assert metrics["cosine"] == pytest.approx(float(cosines.mean()), abs=1e-12)
    kl = F.kl_div(F.log_softmax(outputs, 1), F.log_softmax(reference, 1), log_target=True, reduction="batchmean")
    assert metrics["kl"] == pytest.approx(float(kl), rel=1e-6)


def test_scores_in_float64_on_large_logits():
    generator = torch.Generator().manual_seed(3)
    reference = 200 * torch.randn(64, 1000, generator=generator)
    outputs = reference + torch.randn(64, 1000, generator=generator)
    metrics = Scorer(reference, None)(outputs)
    kl = F.kl_div(
        F.log_softmax(outputs.double(), 1),
        F.log_softmax(reference.double(), 1),
        log_target=True,
        reduction="batchmean",
    )
    assert metrics["kl"] == pytest.approx(float(kl), rel=1e-9)
    assert np.isfinite(metrics["cosine"])
