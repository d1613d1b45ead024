"""The bit-widths mpq_rl quantizes to: the integer ones, the floating-point ones, and the W8A8 reference."""

FLOAT_BITS = (16, 32)
"""Bit-widths that mean "leave this tensor in floating point"."""
INTEGER_BITS = tuple(range(2, 9))
REFERENCE_BITS = (8, 8)
"""W8A8: budgets are fractions of the model's cost at these bits; layers left out of the search keep them."""
ALLOWED_BITS = INTEGER_BITS + FLOAT_BITS
