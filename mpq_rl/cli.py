"""The ``mpq-rl`` command line. User mistakes print one line and exit with status 2, no traceback.

Exit status: 0 done; 2 (:data:`EXIT_USER_ERROR`) a user error, or the system refused a file operation (the disk
full, a file or folder removed under a running command), with one line saying what happened, what was kept and how
to go on; 130 (:data:`EXIT_INTERRUPTED`) Ctrl-C, with one line saying how to resume.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from mpq_rl import status
from mpq_rl.errors import UserError
from mpq_rl.io import check_output_file, json_text, short
from mpq_rl.search.threads import set_torch_threads, threads_per_process
from mpq_rl.text_table import render_table

if TYPE_CHECKING:  # the config (pydantic), PyTorch and the agents load when a command runs: --help answers at once
    from mpq_rl.config import RunConfig
    from mpq_rl.workloads.layers import LayerTable

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def _config(args: argparse.Namespace) -> RunConfig:
    from mpq_rl.config import load_config

    return _on_device(load_config(args.config), args)


def _on_device(config: RunConfig, args: argparse.Namespace) -> RunConfig:
    """``config`` with ``--device`` in place of its ``device`` key, when the flag is given."""
    return config if args.device is None else config.with_overrides(device=args.device)


def _config_and_policy(args: argparse.Namespace) -> tuple[RunConfig, Path | None]:
    """The config and policy file a command works on: ``--run DIR``'s config.yaml and policy.json (``--policy``
    still picks another policy); else ``--config``, or, without it, the config of the run folder that holds
    ``--policy`` (a policy is only meaningful with the model and data it was searched on)."""
    from mpq_rl.runs.recorder import POLICY_FILE
    from mpq_rl.runs.run_folder import CONFIG_FILE, holds_run, run_config

    policy = None if args.policy is None else Path(args.policy)
    if args.run is not None:
        if args.config is not None:
            raise UserError("give --run DIR or --config FILE, not both: --run uses DIR/config.yaml")
        folder = Path(args.run)
        config = _on_device(run_config(folder), args)
        if policy is None:
            policy = folder / POLICY_FILE
            if not policy.is_file():
                raise UserError(
                    f"{folder} has no {POLICY_FILE}: its search found no policy within the budget (or has not "
                    "recorded one yet); pass --policy FILE"
                )
        return config, policy
    if args.config is None and policy is not None and holds_run(policy.parent):
        print(
            f"mpq-rl: using {policy.parent / CONFIG_FILE}, the config of the run that holds {policy}", file=sys.stderr
        )
        return _on_device(run_config(policy.parent), args), policy
    return _config(args), policy


def _needs_policy(policy: Path | None) -> Path:
    if policy is None:
        raise UserError("give --policy FILE, or --run DIR to use a run folder's policy.json")
    return policy


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
    from mpq_rl.runs.assembly import load_workload

    config = _config(args)
    workload = load_workload(config, with_data=config.model.input_shape is None)
    if args.json:
        print(json_text(workload.layers.to_dict()))
        return
    print(f"model {config.model.source}: {len(workload.layers)} quantizable layers, {len(workload.searched)} searched")
    print(render_layer_table(workload.layers))
    print(workload.layers.coverage_line())
    for name, reason in workload.layers.left_out.items():
        print(f"left out: {name} ({reason}; not searched, FP32, costs nothing)")


def cmd_cost(args: argparse.Namespace) -> None:
    """Print the per-layer hardware cost of a policy (W8A8 without --policy)."""
    from mpq_rl.hardware import build_cost_table
    from mpq_rl.hardware.report import cost_report, render_cost_report
    from mpq_rl.quantization.policy import load_policy, validate_policy
    from mpq_rl.runs.assembly import load_workload

    config, policy_file = _config_and_policy(args)
    workload = load_workload(config, with_data=config.model.input_shape is None)
    quant = config.quantization
    costs = build_cost_table(
        workload.layers, config.hardware, formats=quant.formats, reference_bits=quant.reference_bits
    )
    if policy_file is None:
        policy = costs.reference_policy()
    else:
        policy = validate_policy(load_policy(policy_file), workload.layers.names)
    report = cost_report(workload.layers, costs, policy)
    if args.json:
        print(json_text(report))
        return
    print(f"model {config.model.source} on {config.hardware.preset}")
    print(render_cost_report(report, config.hardware.metric))


def cmd_evaluate(args: argparse.Namespace) -> None:
    """Score a policy on the held-out test split (FP32 alongside), optionally after LSQ finetuning."""
    from mpq_rl.deployment.finetune import DEFAULT_LR, finetune
    from mpq_rl.deployment.finetuned_weights import learned_scales
    from mpq_rl.quantization.policy import checked_policy
    from mpq_rl.runs.assembly import load_workload

    config, policy_file = _config_and_policy(args)
    policy_file = _needs_policy(policy_file)
    workload = load_workload(config)
    policy = checked_policy(policy_file, workload.layers.names, workload.fixed, config.quantization)
    epochs = args.finetune_epochs or 0
    lr = DEFAULT_LR if args.lr is None else args.lr
    scales = learned_scales(workload.model, args.weights, policy) if args.weights is not None else None
    result = finetune(
        workload, policy, epochs, lr=lr, seed=config.seed, progress=True, keep_last=args.keep_last, scales=scales
    )
    print(f"model {config.model.source}, policy {policy_file}, {workload.test.num_samples} test samples")
    print(result.table())
    output = args.output or (config.output / "evaluate" if epochs else None)
    if output is not None:
        result.save(output)
        print(
            f"wrote {Path(output) / 'evaluation.json'}" + (" with the finetuned weights and scales" if epochs else "")
        )


def cmd_export(args: argparse.Namespace) -> None:
    """Export the model quantized by a policy as ONNX (Q/DQ per layer) with a JSON sidecar of bits and scales, or
    a causal LM as GGUF with its ggml type per tensor, checked in llama.cpp."""
    from mpq_rl.deployment.export import export_policy, sidecar_path
    from mpq_rl.deployment.export_check import ExportCheck
    from mpq_rl.quantization.policy import checked_policy
    from mpq_rl.runs.assembly import load_workload

    check_output_file(Path(args.output), "--output")
    config, policy_file = _config_and_policy(args)
    # the graph is traced from, and checked in onnxruntime against, the model on the CPU
    config = config.with_overrides(device="cpu")
    policy_file = _needs_policy(policy_file)
    workload = load_workload(config)
    policy = checked_policy(policy_file, workload.layers.names, workload.fixed, config.quantization)
    if Path(args.output).suffix == ".gguf":  # a causal LM for llama.cpp, mpq_rl/deployment/gguf_check.py
        from mpq_rl.deployment.gguf_check import export_policy_gguf

        written, check = export_policy_gguf(workload, policy, args.output, check=not args.no_check)
        size_mb = written.size_bytes / 1e6
        print(f"wrote {written.path} ({size_mb:.2f} MB), {written.overrides_path} and {args.output}.json")
        if check is not None:
            print(check.line())
        return
    sidecar = export_policy(
        workload, policy, args.output, weights=args.weights, min_agreement=args.min_agreement, threads=args.threads
    )
    print(f"wrote {args.output} (opset {sidecar['opset']}, {sidecar['scales']} scales) and {sidecar_path(args.output)}")
    if sidecar["check"] is not None:
        print("\n".join(ExportCheck(**sidecar["check"]).lines()))


def cmd_search(args: argparse.Namespace) -> None:
    """Search per-layer bit-widths under the budget; write the run folder and print the best policy on test data."""
    from mpq_rl.runs.run_folder import run_config
    from mpq_rl.runs.trainer import run_search

    flags = {
        "agent.name": args.agent,
        "agent.episodes": args.episodes,
        "budget.fraction": args.budget,
        "budget.bpw": args.budget_bpw,
        "seed": args.seed,
        "output": args.output,
        "agent.n_envs": args.n_envs,
        **_parallel_flags(args),
        "device": args.device,
    }
    overrides = {key: value for key, value in flags.items() if value is not None}
    if args.resume is not None:
        if args.config is not None:
            raise UserError("give --resume DIR or --config FILE, not both: a resumed run keeps DIR/config.yaml")
        _set_threads(run_config(args.resume).with_overrides(**overrides))  # the run_search below checks it
        result = run_search(None, resume=args.resume, progress=not args.no_progress, overrides=overrides)
    else:
        config = _config(args).with_overrides(**overrides)
        _set_threads(config)
        result = run_search(config, progress=not args.no_progress)
    print(result.report())


def _set_threads(config: RunConfig) -> None:
    """This process's torch threads: its share of the cores with the workers it starts on this machine (the
    workers, and a comparison's Ray tasks, set their own)."""
    from mpq_rl.search.pool import local_processes, resolve_parallel

    set_torch_threads(threads_per_process(local_processes(resolve_parallel(config.parallel, config.agent.n_envs))))


def _parallel_flags(args: argparse.Namespace) -> dict[str, object]:
    """The ``parallel`` keys given as ``--backend``, ``--workers`` and ``--address``."""
    return {"parallel.backend": args.backend, "parallel.workers": args.workers, "parallel.address": args.address}


def _backend(text: str) -> str:
    from mpq_rl.search.settings import BACKENDS

    if text not in BACKENDS:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(BACKENDS)}, got {text!r}")
    return text


def add_parallel_flags(command: argparse.ArgumentParser) -> None:
    """``--backend``, ``--workers`` and ``--address``: where evaluations (or a comparison's runs) run."""
    command.add_argument(
        "--backend",
        type=_backend,
        metavar="NAME",
        help="where evaluations run: local (one at a time), process (worker processes) or ray (a Ray cluster); "
        "parallel.backend",
    )
    command.add_argument("--workers", type=int, metavar="N", help="evaluations at once (parallel.workers)")
    command.add_argument(
        "--address",
        metavar="ADDR",
        help="with --backend ray: auto (the cluster `ray start --head` started here) or host:port; "
        "default a local cluster (parallel.address)",
    )


def _int_list(text: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers like 0,1,2, got {text!r}") from None


def cmd_compare(args: argparse.Namespace) -> None:
    """Run several searchers (and seeds) on one config at the same evaluation budget; table and Pareto plot."""
    from mpq_rl.runs.compare import COMPARE_JSON, COMPARE_MD, PARETO_PNG, compare

    flags = {
        "agent.episodes": args.episodes,
        "budget.fraction": args.budget,
        "budget.bpw": args.budget_bpw,
        **_parallel_flags(args),
    }
    config = _config(args).with_overrides(**{key: value for key, value in flags.items() if value is not None})
    agents = [name.strip() for name in args.agents.split(",") if name.strip()]
    _set_threads(config)
    compare(config, agents, args.seeds, args.output, progress=not args.no_progress)
    print((Path(args.output) / COMPARE_MD).read_text(), end="")
    print(f"wrote {Path(args.output) / COMPARE_MD}, {COMPARE_JSON} and {PARETO_PNG}")


def cmd_adapt(args: argparse.Namespace) -> None:
    """Train with per-layer adaptive fixed-point precision (AdaPT) and float32 side by side; write a run folder."""
    from mpq_rl.adapt.run import SUMMARY_FILE, run_adapt

    config = _config(args)
    if args.seed is not None:
        config = config.with_overrides(seed=args.seed)
    options = {
        "lr": args.lr,
        "batch_size": args.batch_size,
        "activation_bits": args.activation_bits,
        "max_bits": args.max_bits,
    }
    given = {key: value for key, value in options.items() if value is not None}
    summary = run_adapt(config, args.epochs, Path(args.output), fresh=args.fresh, progress=True, **given)
    top1, cost = summary["test_top1"], summary["cost"]
    print(
        f"adapt: test top-1 {100 * top1['adapt']:.2f}% (float32 {100 * top1['fp32']:.2f}%), modelled training "
        f"speed-up {summary['speedup']:.3f}x, average {summary['average_bits']['mac_weighted']:.2f} bits; policy "
        f"{cost['metric']} {100 * cost['ratio_to_w8a8']:.1f}% of W8A8 on {cost['hardware']}"
    )
    print(f"wrote {Path(args.output) / SUMMARY_FILE} and the policy, weights and TensorBoard logs beside it")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mpq-rl",
        description="Mixed-precision quantization search with reinforcement learning under hardware budgets.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], None], device: bool = True) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=handler.__doc__, description=handler.__doc__)
        command.add_argument("--config", help="YAML run configuration (default: the built-in digits workload)")
        if device:
            command.add_argument(
                "--device",
                help="where the model and data run: auto (a GPU when there is one, else the CPU), cpu, cuda or "
                "cuda:N (default: the config's device, auto)",
            )
        command.set_defaults(handler=handler, device=None)
        return command

    layers = add("layers", cmd_layers)
    layers.add_argument("--json", action="store_true", help="print the layer table as JSON")

    def add_run(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--run", metavar="DIR", help="a search's run folder: use its config.yaml and (without --policy) policy.json"
        )

    cost = add("cost", cmd_cost)
    add_run(cost)
    cost.add_argument("--policy", help="policy.json to cost (default: every layer at W8A8, or --run's policy)")
    cost.add_argument("--json", action="store_true", help="print the report as JSON")
    evaluate = add("evaluate", cmd_evaluate)
    add_run(evaluate)
    evaluate.add_argument("--policy", help="policy.json to evaluate (or --run DIR for DIR/policy.json)")
    evaluate.add_argument(
        "--finetune-epochs", type=int, metavar="N", help="first finetune N epochs on the train split (LSQ)"
    )
    evaluate.add_argument("--lr", type=float, help="finetuning learning rate (default 1e-3)")
    evaluate.add_argument(
        "--weights",
        help="score these weights instead of the configured ones: an evaluate --output or adapt run folder, or its "
        "model.safetensors (with the learned scales beside them, if any)",
    )
    evaluate.add_argument(
        "--keep-last",
        action="store_true",
        help="keep the last finetuning epoch even if an earlier one (or the start) scores better on validation",
    )
    evaluate.add_argument(
        "--output",
        help="folder for evaluation.json, model.safetensors and lsq_scales.safetensors "
        "(default with --finetune-epochs: <config output>/evaluate)",
    )
    export = add("export", cmd_export, device=False)  # ONNX export runs on the CPU
    add_run(export)
    export.add_argument("--policy", help="policy.json giving each layer's bits (or --run DIR for DIR/policy.json)")
    export.add_argument("--weights", help="finetuned weights: an evaluate --output folder or its model.safetensors")
    export.add_argument(
        "--output", required=True, help="the model file to write: model.onnx, or model.gguf for a causal LM (llama.cpp)"
    )
    export.add_argument(
        "--min-agreement",
        type=float,
        default=0.99,
        metavar="F",
        help="fail when onnxruntime's top-1 agreement (or cosine) with the simulation is below F (default 0.99)",
    )
    export.add_argument("--threads", type=int, default=1, help="onnxruntime threads for the latency figures")
    export.add_argument(
        "--no-check", action="store_true", help="GGUF only: skip the llama.cpp perplexity check against the simulation"
    )
    search = add("search", cmd_search)
    search.add_argument(
        "--agent",
        help="searcher: mbppo (default: model-based PPO), ddpg (HAQ), td3, sac, ppo, a2c, "
        "or a baseline: uniform, random, greedy, hawq, evolution, surrogate (mbppo without the agent), fixed_mix, "
        "exhaustive",
    )
    search.add_argument("--episodes", type=int, metavar="N", help="policies to evaluate (agent.episodes)")
    search.add_argument("--budget", type=float, metavar="F", help="budget as a fraction of the W8A8 cost")
    search.add_argument("--budget-bpw", type=float, metavar="B", help="budget as average bits per weight (budget.bpw)")
    search.add_argument(
        "--seed",
        type=int,
        metavar="S",
        help="seed of the searcher and of the activation samples ranges are chosen on (not of the data split)",
    )
    search.add_argument("--output", metavar="DIR", help="run folder (default: output in the config, runs/default)")
    search.add_argument("--n-envs", type=int, metavar="N", help="RL agents' parallel environments (agent.n_envs)")
    add_parallel_flags(search)
    search.add_argument("--resume", metavar="DIR", help="continue the interrupted search in the run folder DIR")
    search.add_argument("--no-progress", action="store_true", help="no progress bar")
    compare = add("compare", cmd_compare)
    compare.add_argument(
        "--agents", required=True, help="comma-separated searchers, e.g. mbppo,ddpg,random,greedy,hawq"
    )
    compare.add_argument("--seeds", type=_int_list, default=[0], metavar="S,S", help="seeds of each (default 0)")
    compare.add_argument("--episodes", type=int, metavar="N", help="evaluations per run (agent.episodes)")
    compare.add_argument("--budget", type=float, metavar="F", help="budget as a fraction of the W8A8 cost")
    compare.add_argument("--budget-bpw", type=float, metavar="B", help="budget as average bits per weight (budget.bpw)")
    compare.add_argument("--output", required=True, metavar="DIR", help="folder for the runs and the comparison")
    compare.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_parallel_flags(compare)
    adapt = add("adapt", cmd_adapt)
    adapt.add_argument("--epochs", type=int, required=True, metavar="N", help="epochs over the train split")
    adapt.add_argument("--output", required=True, metavar="DIR", help="run folder to create")
    adapt.add_argument("--lr", type=float, help="Adam learning rate (default 1e-3)")
    adapt.add_argument("--batch-size", type=int, metavar="N", help="training batch size (default 50)")
    adapt.add_argument("--seed", type=int, metavar="S", help="seed of both trainings (default: the config's)")
    adapt.add_argument("--fresh", action="store_true", help="start from fresh weights instead of the configured ones")
    adapt.add_argument(
        "--activation-bits", type=int, metavar="B", help="a_bits of the written policy (default 8; training keeps FP32)"
    )
    adapt.add_argument(
        "--max-bits", type=int, metavar="B", help="largest word length a layer may reach, 4 to 8 (default 8)"
    )
    return parser


def _go_on(args: argparse.Namespace) -> str:
    """How to continue the command ``args`` after it stopped: resume a search, or run the command again."""
    folder = getattr(args, "resume", None) or (getattr(args, "output", None) if args.command == "search" else None)
    if folder is not None:
        return f"the run folder keeps every episode recorded so far; resume with: mpq-rl search --resume {folder}"
    if args.command == "compare":
        return f"finished runs are kept; run the same command again to continue in {args.output}"
    return "nothing half-written was left behind; run the same command again"


def _working_directory_importable() -> None:
    """Put the working directory first on the import path, as ``python -m mpq_rl`` does, so that ``model.factory``
    and ``data.factory`` find a user's module in the folder the command runs from."""
    if not {"", ".", os.getcwd()} & set(sys.path):
        sys.path.insert(0, os.getcwd())


def _starting_line(args: argparse.Namespace) -> str:
    """The first thing a command says, before PyTorch loads (seconds on a cold start)."""
    source = args.config or getattr(args, "run", None) or getattr(args, "resume", None)
    what = source if source is not None else "the built-in digits workload"
    return f"{args.command}: loading PyTorch and {what}"


def main(argv: Sequence[str] | None = None) -> int:
    """The ``mpq-rl`` command; run from the command line (``argv`` None) it says what it is doing on stderr."""
    args = build_parser().parse_args(argv)
    _working_directory_importable()
    status.enable(argv is None)
    status.say(_starting_line(args))
    try:
        args.handler(args)
    except UserError as exc:
        print(f"mpq-rl: error: {exc}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as exc:
        print(f"mpq-rl: {str(exc) or 'interrupted; ' + _go_on(args)}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # the disk full, a file or folder removed under the run: the system's doing, not ours
        what = exc.strerror or type(exc).__name__
        where = f" ({short(str(exc.filename), 80)})" if exc.filename else ""
        print(f"mpq-rl: error: {what}{where}; {_go_on(args)}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
