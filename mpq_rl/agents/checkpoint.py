"""Checkpoints of the stable-baselines3 agents, in files that cannot run code when they are read.

SB3's own ``save`` cloudpickles part of the algorithm (the ``:serialized:`` fields of ``model.zip``) and saves its
replay buffer as a pickle; loading either runs whatever code the file names, and run folders get copied between
machines and colleagues. A checkpoint here is the run folder's ``checkpoint/``:

* ``parameters-<digest>.safetensors``: every state dict SB3 would save (the policy with its target networks, the
  optimizers' moments) and its other torch variables (SAC's entropy coefficient), as safetensors;
* ``replay_buffer-<digest>.npz`` (off-policy agents): the replay buffer's arrays, read with ``allow_pickle=False``;
* ``state.json``, written last: the episodes covered, SB3's counters, the exploration noise's episode and random
  generator, and the SHA-256 of the two files above. A file that does not match its digest is refused.

Restoring builds a fresh algorithm with the run's settings and loads these values into it. The data files are
named by their content and the previous ones are removed only after ``state.json`` names the new ones, so a run
killed while saving keeps its last complete checkpoint.
"""

from __future__ import annotations

import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.save_util import recursive_getattr

from mpq_rl.errors import UserError
from mpq_rl.io import atomic_write_bytes, atomic_write_json, read_json

STATE_FILE = "state.json"
FORMAT = "mpq_rl.checkpoint/1"
PARAMETERS, REPLAY_BUFFER = "parameters", "replay_buffer"
_SUFFIXES = {PARAMETERS: ".safetensors", REPLAY_BUFFER: ".npz"}
_BUFFER_ARRAYS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")
_FIX = "delete the checkpoint folder to re-run the agent from its seed (cached evaluations are reused)"

Count = Annotated[StrictInt, Field(ge=0)]

CHECKPOINT_DIR = "checkpoint"
"""The subfolder of the searcher's output folder (the run folder) that holds its checkpoint."""


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: Annotated[StrictStr, Field(pattern=r"^[a-z_]+-[0-9a-f]{16}\.(safetensors|npz)$")]
    sha256: Annotated[StrictStr, Field(pattern=r"^[0-9a-f]{64}$")]


class _Exploration(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    episode: Count
    generator: dict[str, Any]
    """The noise's ``numpy.random.Generator.bit_generator.state`` (names and integers)."""


class CheckpointState(BaseModel):
    """The content of ``state.json``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    format: Literal["mpq_rl.checkpoint/1"]
    algorithm: StrictStr
    episodes: Count
    """Episodes recorded when the checkpoint was saved."""
    counters: dict[Literal["num_timesteps", "_n_updates", "_episode_num"], Count]
    """SB3's counters, which ``learn(reset_num_timesteps=False)`` continues from."""
    exploration: _Exploration | None
    files: dict[Literal["parameters", "replay_buffer"], _File]


# -- writing ------------------------------------------------------------------------------------------------------


def save_checkpoint(model: BaseAlgorithm, folder: Path, algorithm: str, episodes: int) -> None:
    """Write the checkpoint of ``model`` after ``episodes`` recorded episodes into ``folder``; ``state.json`` last."""
    folder = Path(folder)
    blobs = {PARAMETERS: save_tensors(_tensors(model))}
    if isinstance(model, OffPolicyAlgorithm):
        blobs[REPLAY_BUFFER] = _buffer_bytes(model.replay_buffer)
    files = {}
    for role, data in blobs.items():
        digest = hashlib.sha256(data).hexdigest()
        name = f"{role}-{digest[:16]}{_SUFFIXES[role]}"
        atomic_write_bytes(folder / name, data)
        files[role] = {"name": name, "sha256": digest}
    exploration = getattr(model, "exploration", None)
    state = CheckpointState(
        format=FORMAT,
        algorithm=algorithm,
        episodes=episodes,
        counters={name: int(getattr(model, name)) for name in ("num_timesteps", "_n_updates", "_episode_num")},
        exploration=None
        if exploration is None
        else {"episode": exploration.episode, "generator": exploration.rng.bit_generator.state},
        files=files,
    )
    atomic_write_json(folder / STATE_FILE, state.model_dump(mode="json"))
    kept = {file["name"] for file in files.values()}
    for role, suffix in _SUFFIXES.items():
        for old in folder.glob(f"{role}-*{suffix}"):
            if old.name not in kept:
                old.unlink(missing_ok=True)


def _tensors(model: BaseAlgorithm) -> dict[str, torch.Tensor]:
    """Every tensor SB3's ``save`` would write, by ``object/key`` (optimizers: ``object/param index/field``)."""
    state_dicts, variables = model._get_torch_save_params()
    tensors: dict[str, torch.Tensor] = {}
    for name in state_dicts:
        obj = recursive_getattr(model, name)
        if isinstance(obj, torch.optim.Optimizer):
            for index, fields in obj.state_dict()["state"].items():
                tensors.update({f"{name}/{index}/{field}": value for field, value in fields.items()})
        else:
            tensors.update({f"{name}/{key}": value for key, value in obj.state_dict().items()})
    tensors.update({name: recursive_getattr(model, name) for name in variables})
    # safetensors refuses shared storage; copies also leave the live model untouched.
    return {key: value.detach().cpu().contiguous().clone() for key, value in tensors.items()}


def _buffer_bytes(buffer: ReplayBuffer) -> bytes:
    arrays = {name: getattr(buffer, name) for name in _BUFFER_ARRAYS if getattr(buffer, name, None) is not None}
    out = io.BytesIO()
    np.savez(out, **arrays, pos=np.int64(buffer.pos), full=np.bool_(buffer.full))
    return out.getvalue()


# -- reading ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint read back and checked against its digests, not yet loaded into an algorithm."""

    folder: Path
    state: CheckpointState
    tensors: dict[str, torch.Tensor]
    buffer: dict[str, np.ndarray] | None
    """The replay buffer's arrays (off-policy agents), with ``pos`` and ``full``."""


def read_checkpoint(folder: Path) -> Checkpoint | None:
    """The checkpoint in ``folder`` (None if there is none); a :class:`UserError` if a file is not what the run
    wrote (invalid ``state.json``, a digest that does not match, a file that is not safetensors or plain .npz)."""
    folder = Path(folder)
    path = folder / STATE_FILE
    if not path.is_file():
        return None
    data = read_json(path, _FIX)
    if isinstance(data, dict) and "format" not in data:
        raise UserError(f"{path} is a checkpoint of an older mpq_rl (pickled, so never loaded): {_FIX}")
    try:
        state = CheckpointState.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "top level"
        raise UserError(f"{path} is not a valid checkpoint state ({where}: {error['msg']}): {_FIX}") from None
    if PARAMETERS not in state.files:
        raise UserError(f"{path} names no {PARAMETERS} file: {_FIX}")
    try:
        tensors = load_tensors(_verified(folder, state.files[PARAMETERS]))
    except SafetensorError:
        raise UserError(f"{folder / state.files[PARAMETERS].name} is not a safetensors file: {_FIX}") from None
    buffer = None
    if REPLAY_BUFFER in state.files:
        buffer = _read_buffer(folder / state.files[REPLAY_BUFFER].name, _verified(folder, state.files[REPLAY_BUFFER]))
    return Checkpoint(folder, state, tensors, buffer)


def _verified(folder: Path, file: _File) -> bytes:
    """The bytes of a checkpoint file, if they match the digest ``state.json`` recorded for them."""
    path = folder / file.name
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"checkpoint file {path} cannot be read ({exc.strerror}): {_FIX}") from None
    if hashlib.sha256(data).hexdigest() != file.sha256:
        raise UserError(f"checkpoint file {path} does not match the digest in {STATE_FILE}: {_FIX}")
    return data


def _read_buffer(path: Path, data: bytes) -> dict[str, np.ndarray]:
    try:
        archive = np.load(io.BytesIO(data), allow_pickle=False)
        if not isinstance(archive, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive")
        with archive:
            return {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):
        raise UserError(f"{path} is not an .npz archive of plain arrays (never unpickled): {_FIX}") from None


def load_checkpoint(model: BaseAlgorithm, checkpoint: Checkpoint) -> None:
    """Load ``checkpoint`` into ``model``, freshly built with the run's settings; a :class:`UserError` if it does
    not fit (other networks, another buffer size)."""
    state, folder = checkpoint.state, checkpoint.folder
    off_policy = isinstance(model, OffPolicyAlgorithm)
    if (checkpoint.buffer is not None) != off_policy:
        raise UserError(f"{folder / STATE_FILE} does not fit this run's agent (replay buffer): {_FIX}")
    _load_tensors(model, checkpoint.tensors, folder / state.files[PARAMETERS].name)
    if checkpoint.buffer is not None:
        _load_buffer(model.replay_buffer, checkpoint.buffer, folder / state.files[REPLAY_BUFFER].name)
    for name, value in state.counters.items():
        setattr(model, name, value)
    exploration = getattr(model, "exploration", None)
    if exploration is not None and state.exploration is not None:
        exploration.episode = state.exploration.episode
        try:
            exploration.rng.bit_generator.state = state.exploration.generator
        except (TypeError, ValueError, KeyError):
            raise UserError(f"{folder / STATE_FILE}: exploration.generator is not a generator state: {_FIX}") from None


def _load_tensors(model: BaseAlgorithm, tensors: dict[str, torch.Tensor], path: Path) -> None:
    def mismatch(what: str) -> UserError:
        return UserError(f"{path} does not fit this run's agent ({what}): {_FIX}")

    state_dicts, variables = model._get_torch_save_params()
    left = dict(tensors)
    for name in state_dicts:
        obj = recursive_getattr(model, name)
        live = obj.state_dict()
        prefix = f"{name}/"
        mine = {key.removeprefix(prefix): left.pop(key) for key in list(left) if key.startswith(prefix)}
        if isinstance(obj, torch.optim.Optimizer):
            params = [p for group in obj.param_groups for p in group["params"]]
            state: dict[int, dict[str, torch.Tensor]] = {}
            for key, value in mine.items():
                index, _, field = key.partition("/")
                if not index.isdigit() or int(index) >= len(params):
                    raise mismatch(f"{name}/{key} names no parameter")
                if value.dim() > 0 and value.shape != params[int(index)].shape:
                    raise mismatch(f"{name}/{key} has shape {tuple(value.shape)}")
                state.setdefault(int(index), {})[field] = value
            live["state"] = state
            obj.load_state_dict(live)
            continue
        if set(mine) != set(live):
            missing, extra = sorted(set(live) - set(mine)), sorted(set(mine) - set(live))
            raise mismatch(f"missing {name}/{missing[0]}" if missing else f"unexpected {name}/{extra[0]}")
        for key, value in mine.items():
            if value.shape != live[key].shape:
                raise mismatch(f"{name}/{key} has shape {tuple(value.shape)}, not {tuple(live[key].shape)}")
        obj.load_state_dict(mine)
    for name in variables:
        value, live = left.pop(name, None), recursive_getattr(model, name)
        if value is None or value.shape != live.shape:
            raise mismatch(f"{name} is missing or of another shape")
        live.data.copy_(value)
    if left:
        raise mismatch(f"unexpected {sorted(left)[0]}")


def _load_buffer(buffer: ReplayBuffer, arrays: dict[str, np.ndarray], path: Path) -> None:
    live = {name: getattr(buffer, name) for name in _BUFFER_ARRAYS if getattr(buffer, name, None) is not None}
    expected = {**live, "pos": np.int64(0), "full": np.bool_(False)}
    if set(arrays) != set(expected):
        raise UserError(f"{path} holds the arrays {sorted(arrays)}, not {sorted(expected)}: {_FIX}")
    for name, value in arrays.items():
        want = np.asarray(expected[name])
        if value.shape != want.shape or value.dtype != want.dtype:
            raise UserError(
                f"{path}: {name} is {value.dtype}{list(value.shape)}, not {want.dtype}{list(want.shape)}: {_FIX}"
            )
    pos = int(arrays["pos"])
    if not 0 <= pos < buffer.buffer_size:
        raise UserError(f"{path}: pos {pos} is outside the buffer of {buffer.buffer_size}: {_FIX}")
    for name in live:
        getattr(buffer, name)[...] = arrays[name]
    buffer.pos, buffer.full = pos, bool(arrays["full"])
