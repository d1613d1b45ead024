"""The run configuration: one YAML file per run, typed and validated once, at the edge.

Each package declares the sections it reads (``mpq_rl/*/settings.py``); this module composes them into
:class:`RunConfig`, which the command line and the run layer (:mod:`mpq_rl.runs`) hold; :mod:`mpq_rl.runs.assembly`
hands the builders below their sections (see docs/architecture.md). Loading
rejects unknown keys, wrong types and missing files with a one-line :class:`~mpq_rl.errors.UserError` that names the
key, what was received and how to fix it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, field_validator

from mpq_rl.errors import UserError
from mpq_rl.hardware.settings import HardwareConfig
from mpq_rl.io import NUMBER_DIGITS, short
from mpq_rl.quantization.settings import QuantizationConfig
from mpq_rl.search.settings import BudgetConfig, ParallelConfig, ProxyConfig, RewardConfig
from mpq_rl.settings import FilePath, Section
from mpq_rl.workloads.settings import DataConfig, ModelConfig

SEED_LIMIT = 2**32
"""Seeds are below this: NumPy's and Gymnasium's seeding take 32-bit seeds."""
INPUT_PATHS = (("model", "weights"), ("hardware", "table"), ("data", "kwargs", "root"))
"""What a run reads, by key: given relative in a config file, they are read from the file's folder (``output`` and a
factory's other ``kwargs`` stay as written, relative to the working directory)."""


class AgentConfig(Section):
    name: str = "mbppo"
    episodes: int = Field(300, gt=0)
    n_envs: int = Field(1, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


class RunConfig(Section):
    """One run of mpq_rl. ``budget`` may be a number (a fraction of W8A8) or a mapping."""

    seed: int = Field(0, ge=0, lt=SEED_LIMIT)
    device: str = "auto"
    """Where the model, data and quantized tensors live: auto (a GPU when PyTorch sees one, else the CPU), cpu,
    cuda or cuda:N (see :mod:`mpq_rl.workloads.device`)."""
    model: ModelConfig = Field(default_factory=ModelConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    quantization: QuantizationConfig = Field(default_factory=QuantizationConfig)
    hardware: HardwareConfig = Field(default_factory=HardwareConfig)
    budget: BudgetConfig = Field(default_factory=BudgetConfig)
    proxy: ProxyConfig = Field(default_factory=ProxyConfig)
    reward: RewardConfig = Field(default_factory=RewardConfig)
    agent: AgentConfig = Field(default_factory=AgentConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)
    output: FilePath = Path("runs/default")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", v):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N (e.g. cuda:0), got {v!r}")
        return v

    @field_validator("budget", mode="before")
    @classmethod
    def _budget_number(cls, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return {"fraction": float(v)}
        return v

    def same_search(self, other: RunConfig) -> bool:
        """Whether ``other`` is this search, wherever its evaluations run: equal but for ``parallel`` (a parallel
        run records exactly what a serial one does), so a run finished or begun on one backend counts on another."""
        return self.model_copy(update={"parallel": other.parallel}) == other

    def hparams(self) -> dict[str, Any]:
        """The run's settings as flat HParams values (numbers, strings and booleans), for TensorBoard."""
        flat: dict[str, Any] = {
            "agent": self.agent.name,
            "episodes": self.agent.episodes,
            "n_envs": self.agent.n_envs,
            "seed": self.seed,
            "budget": self.budget.fraction,
            "enforcement": self.budget.enforcement,
            "hardware": self.hardware.preset,
            "metric": self.hardware.metric,
            "reward": self.reward.name,
            "proxy": self.proxy.key,
            "weight_bits": str(self.quantization.weight_bits),
            "activation_bits": str(self.quantization.activation_bits),
        }
        for key, value in sorted(self.agent.kwargs.items()):
            flat[f"agent.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
        return flat

    def with_overrides(self, **changes: Any) -> RunConfig:
        """A copy with dotted keys replaced, e.g. ``{"agent.episodes": 10}``; validated like a file."""
        data = self.model_dump(mode="json")
        for dotted, value in changes.items():
            node = data
            *parents, last = dotted.split(".")
            for key in parents:
                node = node[key]
            node[last] = value
        return parse_config(data, source="command line")

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "(top level)"
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"unknown key {short(repr(key))}: remove it or check its spelling"
    if kind == "missing":
        return f"missing key {key!r}"
    msg = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"key {key!r}: {msg}"
    return f"key {short(repr(key))}: {msg[0].lower() + msg[1:]}, got {short(repr(error.get('input')))}"


def parse_config(data: dict[str, Any] | None, source: str = "config") -> RunConfig:
    """Validate a mapping (as loaded from YAML) into a :class:`RunConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections (seed, model, data, ...), got {type(data).__name__}")
    _refuse_oversized(data, source)
    _refuse_non_finite(data, source, "")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(exc.errors()[0])}") from None


CONFIG_BYTES = 1 << 20
"""The largest config file mpq-rl reads (a config is a few kB)."""
CONFIG_NODES = 100_000
"""The most values a config may hold once YAML's aliases are expanded (an alias bomb holds billions)."""
CONFIG_DEPTH = 32


def _refuse_oversized(data: Any, source: str) -> None:
    """Refuse a config nested deeper than :data:`CONFIG_DEPTH`, of more than :data:`CONFIG_NODES` values with
    aliases expanded, or holding an integer of more than :data:`~mpq_rl.io.NUMBER_DIGITS` digits."""
    pending, count = [(data, 0)], 0
    while pending:
        value, depth = pending.pop()
        count += 1
        if count > CONFIG_NODES or depth > CONFIG_DEPTH:
            what = f"more than {CONFIG_NODES:,} values" if count > CONFIG_NODES else f"nested over {CONFIG_DEPTH} deep"
            raise UserError(f"{source}: the config holds {what} (YAML aliases expanded): write it out plainly")
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**NUMBER_DIGITS:
            raise UserError(f"{source}: an integer of more than {NUMBER_DIGITS} digits: no setting needs one")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        pending.extend((child, depth + 1) for child in children)


def _refuse_non_finite(value: Any, source: str, key: str) -> None:
    """No ``.nan``/``.inf`` anywhere: JSON cannot hold them, so a saved config would not say what the run used."""
    if isinstance(value, float) and not math.isfinite(value):
        raise UserError(f"{source}: key {key!r}: input should be a finite number, got {value!r}")
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for child, item in items:
        _refuse_non_finite(item, source, f"{key}.{child}" if key else str(child))


def load_config(path: str | Path | dict[str, Any] | RunConfig | None = None) -> RunConfig:
    """Load a run configuration from a YAML path, a mapping, an existing config, or the defaults (None)."""
    if isinstance(path, RunConfig):
        return path
    if path is None or isinstance(path, dict):
        return parse_config(path, source="config")
    path = Path(path)
    if path.is_dir():
        raise UserError(f"config file {str(path)!r} is a folder: pass the path of a YAML run configuration")
    if not path.is_file():
        raise UserError(f"config file {str(path)!r} does not exist: pass the path of a YAML run configuration")
    from mpq_rl.safe_files import read_bytes

    try:
        text = read_bytes(path, CONFIG_BYTES).decode("utf-8")
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}): check its permissions") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text: save it as UTF-8") from None
    except RecursionError:
        raise UserError(f"{path}: the config is nested too deeply: write it out plainly") from None
    except ValueError:  # an integer of over 4,300 digits
        raise UserError(f"{path}: a number too long to read: no setting needs one") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(_resolve_input_paths(data, path.parent), source=str(path))


def _resolve_input_paths(data: Any, folder: Path) -> Any:
    """``data`` with each relative path of :data:`INPUT_PATHS` joined to ``folder`` (the config file's), so a
    config names its files the same way from whatever folder a command runs in."""
    for keys in INPUT_PATHS:
        data = _resolve_path(data, keys, folder)
    return data


def _resolve_path(node: Any, keys: tuple[str, ...], folder: Path) -> Any:
    if not isinstance(node, dict) or keys[0] not in node:
        return node
    value = node[keys[0]]
    if len(keys) > 1:
        return {**node, keys[0]: _resolve_path(value, keys[1:], folder)}
    if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
        return {**node, keys[0]: str((folder / value).absolute())}
    return node


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice in one mapping: keep one", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)
