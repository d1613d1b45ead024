"""Hessian traces of a calibration loss with respect to layers' weights and inputs, by Hutchinson's estimator.

``Tr(H) = E[v^T H v]`` for Rademacher ``v`` (Hutchinson 1989; HAWQ-V2, Dong et al. 2020, Alg. 1), with ``H v``
by double backpropagation. One ``v`` spans every layer's weights at once, and another every layer's inputs, so
each layer's estimate is of its own diagonal block (the cross-layer terms vanish in expectation). Weights and
inputs get separate products because their cross terms (a layer's weight with its own input) carry the first
derivative of the loss and would swamp the small curvature of a well-trained model. The loss is the mean over
the calibration samples, so the traces of different layers, and of weights and inputs, are on one scale.

A layer's *input* is the tensor its forward receives (what an activation quantizer in front of it would change),
taken as a separate node, so a tensor that also feeds a residual path is differentiated along this layer's path
only. The model must be in floating point (no quantizer active) while traces are computed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from mpq_rl.errors import UserError
from mpq_rl.workloads.data import Batches
from mpq_rl.workloads.model_io import batch_size_of, call_model, output_tensor

LossFn = Callable[[torch.Tensor, int, torch.Tensor | None], torch.Tensor]
"""``loss(outputs, batch index, targets or None)``: the *sum* over the batch's samples of a per-sample loss."""


@dataclass(frozen=True)
class HessianTraces:
    """Estimated Hessian traces per layer and the number of elements each was taken over."""

    weight: dict[str, float]
    activation: dict[str, float]
    weight_elements: dict[str, int]
    activation_elements: dict[str, int]
    """Input elements summed over every calibration sample."""


def calibration_loss(kind: str, reference: torch.Tensor | None = None, batches: Batches | None = None) -> LossFn:
    """The loss whose curvature measures sensitivity.

    ``cross_entropy`` on labels (for a top-1 proxy); ``kl`` (KL from the FP32 softmax) or ``mse`` (to the FP32
    outputs, per sample summed over elements) for fidelity, with ``reference`` the FP32 outputs of ``batches``
    concatenated in order. At FP32 both fidelity losses are at their minimum, where their Hessian is the
    Gauss-Newton matrix, positive semi-definite.
    """
    if kind == "cross_entropy":
        return lambda out, _, targets: F.cross_entropy(out, targets, reduction="sum")
    if reference is None or batches is None:
        raise ValueError(f"the {kind} loss needs the FP32 reference outputs and their batches")
    sizes = [batch_size_of(inputs) for inputs, _ in batches]
    starts = [sum(sizes[:i]) for i in range(len(sizes))]

    def target_of(index: int) -> torch.Tensor:
        return reference[starts[index] : starts[index] + sizes[index]]

    if kind == "kl":
        return lambda out, i, _: F.kl_div(
            F.log_softmax(out, dim=-1), F.log_softmax(target_of(i), dim=-1), reduction="sum", log_target=True
        )
    if kind == "mse":
        return lambda out, i, _: (out - target_of(i)).pow(2).sum()
    raise ValueError(f"unknown calibration loss {kind!r}: use cross_entropy, kl or mse")


def _rademacher(shape: torch.Size, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    signs = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (signs.to(like.dtype) * 2 - 1).to(like.device)


def _quadratic_forms(
    grads: Sequence[torch.Tensor], variables: Sequence[torch.Tensor], vs: Sequence[torch.Tensor]
) -> list[float]:
    """``v_i^T (H v)_i`` for each variable, ``H v`` by differentiating ``g . v`` once more; 0 for a variable the
    loss does not depend on (its gradient is ``None``)."""
    terms = [(g * v).sum() for g, v in zip(grads, vs, strict=True) if g is not None]
    if not any(t.requires_grad for t in terms):
        return [0.0] * len(vs)
    hvs = torch.autograd.grad(sum(terms), list(variables), retain_graph=True, allow_unused=True)
    return [0.0 if hv is None else float((v * hv).sum()) for v, hv in zip(vs, hvs, strict=True)]


def hessian_traces(
    model: nn.Module,
    layers: Mapping[str, nn.Module],
    batches: Batches,
    loss: LossFn,
    samples: int = 32,
    seed: int = 0,
) -> HessianTraces:
    """Hutchinson estimates of ``Tr(d^2 L / dW^2)`` and ``Tr(d^2 L / dx^2)`` for each layer in ``layers``.

    ``L`` is ``loss`` summed over ``batches`` and divided by the number of samples. ``samples`` Rademacher vectors
    are drawn per estimate, seeded by ``seed``. The model's weights, mode and gradients are left as they were.
    """
    if samples < 1:
        raise UserError(f"the Hessian trace needs at least 1 sample, got {samples}")
    names = list(layers)
    weights = [layers[n].weight for n in names]
    total = batches.num_samples
    weight_trace = dict.fromkeys(names, 0.0)
    input_trace = dict.fromkeys(names, 0.0)
    input_elements = dict.fromkeys(names, 0)
    captured: dict[str, torch.Tensor] = {}

    def make_hook(name: str):
        def hook(module: nn.Module, args: tuple) -> tuple:
            x = args[0]
            x = x.clone() if x.requires_grad else x.detach().clone().requires_grad_(True)
            captured[name] = x
            return (x, *args[1:])

        return hook

    was_training = model.training
    grad_flags = [w.requires_grad for w in weights]
    handles = [layers[n].register_forward_pre_hook(make_hook(n)) for n in names]
    model.eval()
    try:
        for w in weights:
            w.requires_grad_(True)
        # Second derivatives: PyTorch's fused CPU attention kernels have no double backward, the math one has.
        with torch.enable_grad(), sdpa_kernel(SDPBackend.MATH):
            for index, (inputs, targets) in enumerate(batches):
                captured.clear()
                value = loss(output_tensor(call_model(model, inputs)).float(), index, targets) / total
                xs = [captured[n] for n in names]
                # allow_unused: a layer off the loss's path (a pooler whose output is not scored) has no curvature
                grads = torch.autograd.grad(value, weights + xs, create_graph=True, allow_unused=True)
                for n, x in zip(names, xs, strict=True):
                    input_elements[n] += x.numel()
                for k in range(samples):
                    # the same weight vector v for sample k in every batch: the loss sums the batches' Hessians
                    weight_gen = torch.Generator().manual_seed(seed * 1_000_003 + k)
                    input_gen = torch.Generator().manual_seed((seed * 1_000_003 + k) * 7919 + index + 1)
                    w_vs = [_rademacher(w.shape, weight_gen, w) for w in weights]
                    x_vs = [_rademacher(x.shape, input_gen, x) for x in xs]
                    for n, q in zip(names, _quadratic_forms(grads[: len(names)], weights, w_vs), strict=True):
                        weight_trace[n] += q / samples
                    for n, q in zip(names, _quadratic_forms(grads[len(names) :], xs, x_vs), strict=True):
                        input_trace[n] += q / samples
    finally:
        for handle in handles:
            handle.remove()
        for w, flag in zip(weights, grad_flags, strict=True):
            w.requires_grad_(flag)
        model.train(was_training)
    return HessianTraces(
        weight=weight_trace,
        activation=input_trace,
        weight_elements={n: w.numel() for n, w in zip(names, weights, strict=True)},
        activation_elements=input_elements,
    )
