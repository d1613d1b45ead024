"""The ``mpq-rl`` command line. User mistakes print one line and exit with status 2, no traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from mpq_rl.config import RunConfig, load_config
from mpq_rl.errors import UserError
from mpq_rl.layers import LayerTable
from mpq_rl.text_table import render_table

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _config(args: argparse.Namespace) -> RunConfig:
    return load_config(args.config)


def render_layer_table(table: LayerTable) -> str:
    """A fixed-width table of the layers: index, name, kind, weight shape, input shape, params, MACs."""
    rows = [("#", "layer", "kind", "weight", "input", "params", "MACs")]
    for layer in table:
        kind = layer.kind + (" dw" if layer.is_depthwise else f" g{layer.groups}" if layer.groups > 1 else "")
        rows.append(
            (
                str(layer.index),
                layer.name,
                kind,
                "x".join(map(str, layer.weight_shape)),
                "x".join(map(str, layer.input_shape)),
                f"{layer.params:,}",
                f"{layer.macs:,}",
            )
        )
    rows.append(("", "total", "", "", "", f"{table.total_params:,}", f"{table.total_macs:,}"))
    return render_table(rows, right=(0, 5, 6))


def cmd_layers(args: argparse.Namespace) -> None:
    """Print the quantizable layers of the configured model."""
    from mpq_rl.workload import load_workload

    config = _config(args)
    workload = load_workload(config, with_data=config.model.input_shape is None)
    if args.json:
        print(json.dumps(workload.layers.to_dict(), indent=2))
        return
    print(f"model {config.model.source}: {len(workload.layers)} quantizable layers, {len(workload.searched)} searched")
    print(render_layer_table(workload.layers))


def cmd_cost(args: argparse.Namespace) -> None:
    """Print the per-layer hardware cost of a policy (W8A8 without --policy)."""
    from mpq_rl.hardware import build_cost_table
    from mpq_rl.hardware.report import cost_report, render_cost_report
    from mpq_rl.policy import load_policy, validate_policy
    from mpq_rl.workload import load_workload

    config = _config(args)
    workload = load_workload(config, with_data=config.model.input_shape is None)
    costs = build_cost_table(workload.layers, config.hardware)
    if args.policy is None:
        policy = costs.reference_policy()
    else:
        policy = validate_policy(load_policy(args.policy), workload.layers.names)
    report = cost_report(workload.layers, costs, policy)
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(f"model {config.model.source} on {config.hardware.preset}")
    print(render_cost_report(report, config.hardware.metric))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpq-rl",
        description="Mixed-precision quantization search with reinforcement learning under hardware budgets.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], None]) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=handler.__doc__, description=handler.__doc__)
        command.add_argument("--config", help="YAML run configuration (default: the built-in digits workload)")
        command.set_defaults(handler=handler)
        return command

    layers = add("layers", cmd_layers)
    layers.add_argument("--json", action="store_true", help="print the layer table as JSON")
    cost = add("cost", cmd_cost)
    cost.add_argument("--policy", help="policy.json to cost (default: every layer at W8A8)")
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.handler(args)
    except UserError as exc:
        print(f"mpq-rl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("mpq-rl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
