"""The ``device`` key and ``--device``: validated at the edge, a missing GPU is one line and exit status 2."""

import pytest
import torch

from mpq_rl.cli import main
from mpq_rl.config import parse_config
from mpq_rl.errors import UserError
from mpq_rl.workloads.device import resolve_device

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")


def test_device_key_accepts_auto_cpu_and_cuda_and_refuses_anything_else():
    for spec in ("auto", "cpu", "cuda", "cuda:1"):
        assert parse_config({"device": spec}).device == spec
    assert parse_config({}).device == "auto"
    for bad in ("gpu", "cuda:", "cuda:x", "CPU"):
        with pytest.raises(UserError, match="key 'device': device must be auto, cpu, cuda or cuda:N"):
            parse_config({"device": bad})


def test_auto_takes_a_gpu_only_when_there_is_one():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


@no_gpu
@pytest.mark.parametrize("spec", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_line_and_exit_2(spec, capsys):
    with pytest.raises(UserError, match="sees no CUDA GPU"):
        resolve_device(spec)
    assert main(["layers", "--device", spec]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"device {spec!r}" in err and "use device: cpu" in err


@no_gpu
def test_a_config_asking_for_cuda_fails_before_loading_anything(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("device: cuda\nmodel: {name: no_such_model}\n")
    assert main(["search", "--config", str(config)]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_explicit_cpu_runs_on_the_cpu(digits_model, one_thread, capsys):
    from mpq_rl.runs.assembly import load_workload

    workload = load_workload(parse_config({"device": "cpu", "data": {"calibration_samples": 64}}))
    assert workload.device == torch.device("cpu")
    assert all(p.device.type == "cpu" for p in workload.model.parameters())
    assert all(x.device.type == "cpu" for x, _ in workload.calibration)
    assert main(["layers", "--device", "cpu"]) == 0
    assert "quantizable layers" in capsys.readouterr().out
