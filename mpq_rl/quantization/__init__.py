"""Quantizers and number formats, the quantization simulator and its compiled kernels, LSQ quantizers, and the bit-width
policy a search produces."""
