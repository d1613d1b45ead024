"""Weight SQNR of each number format at 2-8 bits on a configured model (docs/results-formats.md).

    python experiments/format_sqnr.py experiments/configs/digits_formats.yaml experiments/configs/minilm_formats.yaml

For every quantizable layer, the weights are quantized per output channel with the config's range method (MSE by
default) in each format; the SQNR is ``10 log10(sum ||W||^2 / sum ||Q(W) - W||^2)`` over all layers together.
fp and flint have no 2-bit form (see mpq_rl/quantization/formats.py). Prints one markdown table per model.
"""

from __future__ import annotations

import argparse
import math

import torch

from mpq_rl.config import load_config
from mpq_rl.quantization import formats
from mpq_rl.runs.assembly import load_workload

BITS = range(2, 9)


def weight_sqnr(weights: list[torch.Tensor], code: int, method: str) -> float:
    """SQNR in dB of all ``weights`` quantized at ``code``, errors and energies summed over the layers."""
    number_format = formats.format_for(code)
    signal = noise = 0.0
    for weight in weights:
        with torch.no_grad():
            quantized = number_format.weight_quantizers(weight, [formats.bits_of(code)], method)[0].fake_quantize(
                weight
            )
        signal += float(weight.pow(2).sum())
        noise += float((quantized - weight).pow(2).sum())
    return 10.0 * math.log10(signal / noise)


def table(config_path: str) -> str:
    config = load_config(config_path)
    workload = load_workload(config)
    modules = dict(workload.model.named_modules())
    weights = [modules[name].weight.detach().float() for name in workload.layers.names]
    rows = [f"| format | {' | '.join(f'{b} bits' for b in BITS)} |", "|---|" + "---:|" * len(BITS)]
    for name in formats.FORMAT_NAMES:
        cells = []
        for bits in BITS:
            code = formats.precision_code(name, bits)
            has = name == "int" or bits >= formats.FORMATS[name].min_bits
            cells.append(f"{weight_sqnr(weights, code, config.quantization.weight_range):.2f}" if has else "-")
        rows.append(f"| {name} | {' | '.join(cells)} |")
    method = config.quantization.weight_range
    title = f"Weight SQNR (dB), {config.model.source}: {len(weights)} layers, per-channel {method}"
    return "\n".join([title, "", *rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+", help="run configurations whose models to measure")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for path in args.configs:
        print(table(path), end="\n\n", flush=True)


if __name__ == "__main__":
    main()
