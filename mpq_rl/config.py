"""The run configuration: one YAML file per run, typed and validated once, at the edge.

Every part of mpq_rl reads the same :class:`RunConfig`. Loading rejects unknown keys, wrong types and missing
files with a one-line :class:`~mpq_rl.errors.UserError` that names the key, what was received and how to fix it.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from mpq_rl.errors import UserError

FLOAT_BITS = (16, 32)
"""Bit-widths that mean "leave this tensor in floating point"."""
INTEGER_BITS = tuple(range(2, 9))
REFERENCE_BITS = (8, 8)
"""W8A8: budgets are fractions of the model's cost at these bits; layers left out of the search keep them."""
ALLOWED_BITS = INTEGER_BITS + FLOAT_BITS
METRICS = ("latency", "energy", "size", "bops")
SEED_LIMIT = 2**32
"""Seeds are below this: NumPy's and Gymnasium's seeding take 32-bit seeds."""


FilePath = Annotated[Path, Field(strict=False)]
"""A path given as a YAML string."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


def _check_allowed(values: list[int], key: str) -> None:
    bad = [b for b in values if b not in ALLOWED_BITS]
    if bad:
        raise ValueError(f"{key} must be among {list(ALLOWED_BITS)} (16/32 = floating point), got {bad}")


def _check_bits(values: list[int], key: str) -> list[int]:
    _check_allowed(values, key)
    if len(set(values)) != len(values):
        raise ValueError(f"{key} lists a bit-width twice: {values}")
    return sorted(values)


class ModelConfig(_Section):
    """Which network to quantize: a built-in ``name`` or a ``factory`` ("pkg.module:callable")."""

    name: str | None = "digits_cnn"
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: FilePath | None = None
    input_shape: list[int] | None = None
    path: FilePath | None = None
    """A model folder or file that the model reads (``causal_lm``: a Hugging Face folder or a GGUF file)."""

    @model_validator(mode="after")
    def _one_source(self) -> ModelConfig:
        if self.factory is not None and self.name not in (None, "digits_cnn"):
            raise ValueError("give either model.name or model.factory, not both")
        if self.weights is not None and not self.weights.is_file():
            raise ValueError(f"model.weights file {str(self.weights)!r} does not exist")
        if self.path is not None and not self.path.exists():
            raise ValueError(f"model.path {str(self.path)!r} does not exist: give a model folder or file")
        if self.input_shape is not None and (not self.input_shape or min(self.input_shape) < 1):
            raise ValueError(f"model.input_shape must be positive sizes like [1, 3, 32, 32], got {self.input_shape}")
        return self

    @property
    def source(self) -> str:
        """The factory path if one is given, else the built-in name."""
        return self.factory or self.name or ""


class DataConfig(_Section):
    """Where calibration and test data come from: a built-in ``name`` or a ``factory``; ``none`` for no data."""

    name: str | None = "digits"
    factory: str | None = None
    kwargs: dict[str, Any] = Field(default_factory=dict)
    calibration_samples: int = Field(512, gt=0)
    batch_size: int = Field(256, gt=0)
    path: FilePath | None = None
    """A data file the dataset reads (``text``: a plain-text corpus)."""
    calibration_tokens: int | None = Field(None, gt=0)
    """Tokens in the calibration split of a text dataset (``text``)."""
    test_tokens: int | None = Field(None, gt=0)
    """Tokens in the held-out split of a text dataset (``text``)."""

    @property
    def file_kwargs(self) -> dict[str, Any]:
        """``path``, ``calibration_tokens`` and ``test_tokens`` where given, as the dataset's keyword arguments."""
        given = {"path": self.path, "calibration_tokens": self.calibration_tokens, "test_tokens": self.test_tokens}
        return {key: value for key, value in given.items() if value is not None}


class QuantizationConfig(_Section):
    """The bit-width candidates, which layers are searched, and how ranges are chosen."""

    weight_bits: list[int] = Field(default_factory=lambda: list(INTEGER_BITS))
    activation_bits: list[int] = Field(default_factory=lambda: list(INTEGER_BITS))
    include: str | None = None
    exclude: str | None = None
    pin: dict[str, list[int]] = Field(default_factory=dict)
    weight_only_activation_bits: int = FLOAT_BITS[-1]
    """The precision activations run at in a weight-only search (``activation_bits: []``): 32 or 16 (floating
    point) or an integer bit-width; every layer's input is simulated and costed at it, and the budget's reference
    is W8 with activations at it, so weight bits alone reach any budget down to the lowest weight bits."""
    weight_range: Literal["mse", "minmax", "percentile"] = "mse"
    activation_range: Literal["mse", "minmax", "percentile"] = "mse"
    percentile: float = Field(99.99, gt=50.0, le=100.0, allow_inf_nan=False)
    formats: list[Literal["int", "fp", "flint"]] = Field(default_factory=lambda: ["int"])
    """Number formats each layer's weights and activations choose from (see :mod:`mpq_rl.quantization.formats`)."""
    weight_formats: list[str] = Field(default_factory=list)
    """Group-wise weight formats (``q4_0``, ``int3_g64_asym``, ...: :mod:`mpq_rl.quantization.groupwise`); when
    given, they are the weight candidates in place of ``weight_bits`` (a weight-only search)."""

    @field_validator("weight_formats")
    @classmethod
    def _weight_formats(cls, v: list[str]) -> list[str]:
        from mpq_rl.quantization import groupwise

        unknown = [name for name in v if name not in groupwise.FORMAT_NAMES]
        if unknown or len(set(v)) != len(v):
            raise ValueError(
                f"quantization.weight_formats must list each format once among {', '.join(groupwise.GGUF_TYPES)} "
                f"and int<b>_g<G>[_asym] (b 2..8, G 32/64/128), got {unknown or v}"
            )
        return v

    @field_validator("formats")
    @classmethod
    def _formats(cls, v: list[str]) -> list[str]:
        if not v or len(set(v)) != len(v):
            raise ValueError(f"quantization.formats must list each format once, e.g. [int, fp, flint], got {v}")
        return v

    @field_validator("weight_bits")
    @classmethod
    def _weight_bits(cls, v: list[int]) -> list[int]:
        if not v:
            raise ValueError("quantization.weight_bits needs at least one bit-width, e.g. [2, 4, 8]")
        return _check_bits(v, "quantization.weight_bits")

    @field_validator("activation_bits")
    @classmethod
    def _activation_bits(cls, v: list[int]) -> list[int]:
        return _check_bits(v, "quantization.activation_bits")

    @field_validator("weight_only_activation_bits")
    @classmethod
    def _weight_only_activation_bits(cls, v: int) -> int:
        _check_allowed([v], "quantization.weight_only_activation_bits")
        return v

    @field_validator("include", "exclude")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"not a valid regular expression ({exc})") from None
        return v

    @field_validator("pin")
    @classmethod
    def _pin(cls, v: dict[str, list[int]]) -> dict[str, list[int]]:
        for name, bits in v.items():
            if len(bits) != 2:
                raise ValueError(f"quantization.pin.{name} must be [w_bits, a_bits], got {bits}")
            _check_allowed(bits, f"quantization.pin.{name}")
        return v

    @model_validator(mode="after")
    def _group_formats_weight_only(self) -> QuantizationConfig:
        if self.weight_formats and self.activation_bits:
            raise ValueError(
                "quantization.weight_formats are weight-only formats: set quantization.activation_bits: [] "
                f"(got {self.activation_bits})"
            )
        return self

    @property
    def weight_only(self) -> bool:
        return not self.activation_bits

    @property
    def weight_codes(self) -> list[int]:
        """The weight candidates as precision codes: ``weight_formats`` from the fewest bits per weight up, else
        every ``formats`` at every ``weight_bits``."""
        from mpq_rl.quantization import formats, groupwise

        if self.weight_formats:
            return groupwise.codes_by_size(self.weight_formats)
        return formats.candidate_codes(self.formats, self.weight_bits)

    @property
    def activation_candidates(self) -> list[int]:
        """The activation bits to choose from: ``[weight_only_activation_bits]`` for a weight-only search."""
        return self.activation_bits or [self.weight_only_activation_bits]

    @property
    def reference_bits(self) -> tuple[int, int]:
        """The bits budgets are fractions of: W8A8, or W8 at the deployed activation precision when weight-only."""
        return (REFERENCE_BITS[0], self.weight_only_activation_bits) if self.weight_only else REFERENCE_BITS


class HardwareConfig(_Section):
    """The hardware cost model: a preset, the metric the budget constrains, and parameter overrides."""

    preset: str = "bitfusion"
    metric: Literal["latency", "energy", "size", "bops"] = "latency"
    overrides: dict[str, Any] = Field(default_factory=dict)
    table: FilePath | None = None

    @field_validator("table")
    @classmethod
    def _table_exists(cls, v: Path | None) -> Path | None:
        if v is not None and not v.is_file():
            raise ValueError(f"hardware.table file {str(v)!r} does not exist")
        return v


class BudgetConfig(_Section):
    """The cost budget as a fraction of the W8A8 cost, and how an episode is kept within it."""

    fraction: float = Field(0.5, gt=0.0, allow_inf_nan=False)
    enforcement: Literal["project", "wall", "penalty"] = "project"
    bpw: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    """Average stored bits per weight of the searched layers (scales included), in place of ``fraction``: the
    budget is then on model size (:mod:`mpq_rl.search.size_budget`)."""
    bytes: float | None = Field(None, gt=0.0, allow_inf_nan=False)
    """Stored bytes of all quantized layers, in place of ``fraction`` (a size budget, like ``bpw``)."""

    @model_validator(mode="after")
    def _one_size_budget(self) -> BudgetConfig:
        if self.bpw is not None and self.bytes is not None:
            raise ValueError(f"give budget.bpw or budget.bytes, not both (got {self.bpw} and {self.bytes})")
        return self

    @property
    def on_size(self) -> bool:
        """Whether the budget is a model size (``bpw`` or ``bytes``) rather than a fraction of W8A8."""
        return self.bpw is not None or self.bytes is not None


class ProxyConfig(_Section):
    """The proxy accuracy the search optimizes, on calibration data only."""

    metric: Literal["top1", "fidelity"] = "top1"
    fidelity: Literal["agreement", "kl", "cosine"] = "agreement"

    @property
    def key(self) -> str:
        """The name of the proxy among the evaluator's metrics (and in every report): top1, agreement, kl or
        cosine."""
        return self.metric if self.metric == "top1" else self.fidelity


class RewardConfig(_Section):
    name: str = "haq"
    kwargs: dict[str, Any] = Field(default_factory=dict)


class AgentConfig(_Section):
    name: str = "mbppo"
    episodes: int = Field(300, gt=0)
    n_envs: int = Field(1, gt=0)
    kwargs: dict[str, Any] = Field(default_factory=dict)


BackendName = Literal["local", "process", "ray"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
_CLUSTER_ADDRESS = re.compile(r"(ray://)?[A-Za-z0-9.\-\[\]:]+:\d+")


class ParallelConfig(_Section):
    """Where a search's evaluations run: ``local`` (in the search's process, one at a time), ``process`` (spawned
    worker processes on this machine) or ``ray`` (actors on a Ray cluster: a local one started for the run when
    ``address`` is null, else the cluster at ``auto`` or ``host:port``). ``workers`` evaluate at once.

    Left out (null), the backend is ``process`` with ``agent.n_envs`` workers when ``agent.n_envs > 1`` (the
    environments' episodes are evaluated in parallel, as before this section existed) and ``local`` otherwise;
    ``workers`` left out is ``agent.n_envs`` when above 1, else the cores this process may use. See
    :meth:`resolved`."""

    backend: BackendName | None = None
    workers: int | None = Field(None, gt=0)
    address: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParallelConfig:
        if self.backend == "local" and self.workers not in (None, 1):
            raise ValueError(
                f"parallel.backend local evaluates one policy at a time, got workers: {self.workers}: "
                "set parallel.backend to process or ray, or workers to 1"
            )
        if self.address is not None and self.backend != "ray":
            raise ValueError(
                f"parallel.address names a Ray cluster, got {self.address!r} with backend "
                f"{self.backend or 'unset'}: set parallel.backend: ray, or remove the address"
            )
        if self.address not in (None, "auto") and not _CLUSTER_ADDRESS.fullmatch(self.address):
            raise ValueError(
                "parallel.address must be null (start a local Ray cluster), auto (the cluster `ray start` "
                f"started on this machine) or host:port like 10.0.0.5:6379, got {self.address!r}"
            )
        return self

    def resolved(self, n_envs: int) -> ParallelConfig:
        """This section with its backend and workers filled in for a run with ``agent.n_envs = n_envs``."""
        from mpq_rl.search.threads import usable_cores

        backend = self.backend or ("process" if n_envs > 1 or (self.workers or 1) > 1 else "local")
        if backend == "local":
            return self.model_copy(update={"backend": backend, "workers": 1})
        workers = self.workers or (n_envs if n_envs > 1 else usable_cores())
        return self.model_copy(update={"backend": backend, "workers": workers})


class RunConfig(_Section):
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

    @property
    def evaluation(self) -> ParallelConfig:
        """Where this run's evaluations run: :attr:`parallel` resolved against ``agent.n_envs``."""
        return self.parallel.resolved(self.agent.n_envs)

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
        return f"unknown key {key!r}: remove it or check its spelling"
    if kind == "missing":
        return f"missing key {key!r}"
    msg = error["msg"].removeprefix("Value error, ")
    if kind == "value_error":
        return f"key {key!r}: {msg}"
    return f"key {key!r}: {msg[0].lower() + msg[1:]}, got {error.get('input')!r}"


def parse_config(data: dict[str, Any] | None, source: str = "config") -> RunConfig:
    """Validate a mapping (as loaded from YAML) into a :class:`RunConfig`."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise UserError(f"{source}: expected a mapping of sections (seed, model, data, ...), got {type(data).__name__}")
    _refuse_non_finite(data, source, "")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise UserError(f"{source}: {_describe(exc.errors()[0])}") from None


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
    try:
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except OSError as exc:
        raise UserError(f"config file {path} cannot be read ({exc.strerror}): check its permissions") from None
    except UnicodeDecodeError:
        raise UserError(f"config file {path} is not UTF-8 text: save it as UTF-8") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from None
    return parse_config(data, source=str(path))


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
