"""Quantization sensitivity: how much each searched layer's tensors change at each candidate bit-width.

For every searched layer and candidate, the relative squared error (noise-to-signal ratio,
``||q(x) - x||^2 / ||x||^2``, see :func:`mpq_rl.quantization.quant.quantization_error`) of

* its weight, quantized at ``w`` bits exactly as the simulator quantizes it (per channel, same range method), and
* its input activation, quantized at ``a`` bits by the simulator's calibrated quantizer, measured on the seeded
  calibration sample the quantizer's range was chosen on.

Nothing here runs the model or scores a policy, so it costs no evaluation: it reuses the weights and the
activation samples the simulator already holds (the quantized tensors it computes are cached for the search).
Floating-point candidates (16, 32) have zero error. Second-order theory (HAWQ; Dong et al. 2019) makes the loss
increase of a small perturbation proportional to its squared size, so a model that is linear in these errors,
with one learned weight per layer, is the natural first surrogate of the proxy (:mod:`mpq_rl.agents.surrogate`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from mpq_rl.quantization.quant import is_float_bits, quantization_error
from mpq_rl.quantization.simulator import QuantSimulator


@dataclass(frozen=True)
class Sensitivity:
    """Relative quantization errors of the searched layers at each candidate bit-width."""

    weight: np.ndarray
    """``[searched layer, weight candidate]``."""
    activation: np.ndarray
    """``[searched layer, activation candidate]``."""
    seconds: float = 0.0
    """Wall time it took to measure (reported with the run; not an evaluation)."""

    @classmethod
    def theoretical(cls, layers: int, weight_bits: Sequence[int], activation_bits: Sequence[int]) -> Sensitivity:
        """The textbook value for every layer alike, ``4^-bits`` (uniform noise of a full-range quantizer):
        what a search knows without measuring anything (the ablation of measured sensitivity)."""

        def row(bits: Sequence[int]) -> list[float]:
            return [0.0 if is_float_bits(b) else 4.0**-b for b in bits]

        return cls(np.array([row(weight_bits)] * layers), np.array([row(activation_bits)] * layers))

    def features(self) -> np.ndarray:
        """Per layer, every candidate's error on a log scale in [0, 1]: ``(log10(err) + 6) / 6``, clipped (an
        error of 1e-6 or less is 0, an error of 1 is 1). The environment's sensitivity observations."""
        both = np.concatenate([self.weight, self.activation], axis=1)
        return np.clip((np.log10(np.maximum(both, 1e-12)) + 6.0) / 6.0, 0.0, 1.0).astype(np.float32)


def measure_sensitivity(
    simulator: QuantSimulator,
    names: Sequence[str],
    weight_bits: Sequence[int],
    activation_bits: Sequence[int],
) -> Sensitivity:
    """The relative weight and activation quantization errors of layers ``names`` (see the module docstring)."""
    started = time.perf_counter()
    weight = np.zeros((len(names), len(weight_bits)))
    activation = np.zeros((len(names), len(activation_bits)))
    for i, name in enumerate(names):
        fp32 = simulator.fp32_weights[name]
        for j, bits in enumerate(weight_bits):
            if not is_float_bits(bits):
                weight[i, j] = quantization_error(fp32, simulator.weight(name, bits))
        needs_sample = any(not is_float_bits(bits) for bits in activation_bits)
        sample = simulator.activation_sample(name) if needs_sample else None
        for j, bits in enumerate(activation_bits):
            quantizer = simulator.activation(name, bits)
            if quantizer is not None and sample is not None:
                activation[i, j] = quantization_error(sample, quantizer.values(sample))
    return Sensitivity(weight, activation, time.perf_counter() - started)
