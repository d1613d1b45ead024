"""Energy per arithmetic operation and per bit moved: the model every analytic preset uses for energy.

Integer arithmetic follows QKeras QTools' fits to Horowitz (ISSCC 2014, 45 nm): a ``b_w x b_a`` multiplier costs
``0.0029948 * b_w * b_a + 0.0010417 * sqrt(b_w * b_a)`` pJ (0.200 pJ at 8x8, 3.100 pJ at 32x32), an adder
``0.003125 * b`` pJ, and the accumulator of a dot product of length ``fan_in`` is
``ceil(log2(fan_in)) + b_w + b_a - 1`` bits wide. Floating point (16 or 32 bits) uses Horowitz's measured
fp16 / fp32 multiply and add energies; a product with one floating-point operand runs in floating point at the
wider of the two widths.
"""

from __future__ import annotations

import numpy as np

from mpq_rl.hardware.shapes import FLOAT_MIN_BITS

MULT_PJ_PER_BIT2 = 0.0029948
MULT_PJ_PER_SQRT_BIT2 = 0.0010417
ADD_PJ_PER_BIT = 0.003125
FP16_MULT_PJ, FP16_ADD_PJ = 1.1, 0.4
FP32_MULT_PJ, FP32_ADD_PJ = 3.7, 0.9

QTOOLS_DRAM_PJ_PER_BIT = 20.3125
"""QTools' DRAM access energy (Horowitz: 1.3-2.6 nJ per 64 bits)."""
HOROWITZ_SRAM_32KB_PJ_PER_BIT = 20.0 / 64
"""Horowitz: a 64-bit read from a 32 KB SRAM costs 20 pJ."""


def int_multiplier_pj(w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Energy of one integer multiplication of any widths in pJ (QTools' fit: 0.200 at 8x8, 3.100 at 32x32)."""
    product = np.asarray(w_bits, dtype=np.float64) * np.asarray(a_bits, dtype=np.float64)
    return MULT_PJ_PER_BIT2 * product + MULT_PJ_PER_SQRT_BIT2 * np.sqrt(product)


def multiplier_pj(w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Energy of one multiplication at mpq_rl's bit-widths: integers up to 8 bits, fp16 / fp32 at 16 / 32."""
    wide = np.maximum(w_bits, a_bits)
    floating = np.where(wide > FLOAT_MIN_BITS, FP32_MULT_PJ, FP16_MULT_PJ)
    return np.where(wide >= FLOAT_MIN_BITS, floating, int_multiplier_pj(w_bits, a_bits))


def adder_pj(bits: np.ndarray) -> np.ndarray:
    """Energy of one integer addition of ``bits``-wide operands in pJ (QTools)."""
    return ADD_PJ_PER_BIT * np.asarray(bits, dtype=np.float64)


def accumulator_bits(fan_in: np.ndarray, w_bits: np.ndarray, a_bits: np.ndarray) -> np.ndarray:
    """Width of an exact integer accumulator for a dot product of length ``fan_in`` (QTools)."""
    return np.ceil(np.log2(np.maximum(fan_in, 1))) + w_bits + a_bits - 1


def int_mac_pj(w_bits: np.ndarray, a_bits: np.ndarray, fan_in: np.ndarray) -> np.ndarray:
    """Energy of one integer multiply-accumulate of any widths in pJ (fixed-point hardware such as bit-serial)."""
    return int_multiplier_pj(w_bits, a_bits) + adder_pj(accumulator_bits(fan_in, w_bits, a_bits))


def mac_pj(w_bits: np.ndarray, a_bits: np.ndarray, fan_in: np.ndarray) -> np.ndarray:
    """Energy of one multiply-accumulate in pJ: a multiplication plus an addition into the accumulator."""
    wide = np.maximum(w_bits, a_bits)
    floating_add = np.where(wide > FLOAT_MIN_BITS, FP32_ADD_PJ, FP16_ADD_PJ)
    add = np.where(wide >= FLOAT_MIN_BITS, floating_add, adder_pj(accumulator_bits(fan_in, w_bits, a_bits)))
    return multiplier_pj(w_bits, a_bits) + add


def memory_pj(
    macs: np.ndarray,
    w_bits: np.ndarray,
    a_bits: np.ndarray,
    dram_traffic_bits: np.ndarray,
    operand_reuse: float,
    sram_pj_per_bit: float,
    dram_pj_per_bit: float,
) -> np.ndarray:
    """Energy of moving data in pJ: each operand read from SRAM once per ``operand_reuse`` MACs, DRAM traffic
    written into and read out of SRAM once, and the DRAM traffic itself."""
    sram_bits = macs * (w_bits + a_bits) / operand_reuse + 2 * dram_traffic_bits
    return sram_bits * sram_pj_per_bit + dram_traffic_bits * dram_pj_per_bit
