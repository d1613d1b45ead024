"""The run configuration: defaults, validation errors that name the key, round trips."""

import pytest

from mpq_rl.config import RunConfig, load_config, parse_config
from mpq_rl.errors import UserError


def test_defaults_are_the_digits_workload():
    config = load_config()
    assert config.model.name == "digits_cnn"
    assert config.data.name == "digits"
    assert config.quantization.weight_bits == [2, 3, 4, 5, 6, 7, 8]
    assert config.budget.fraction == 0.5
    assert config.budget.enforcement == "project"


def test_budget_accepts_a_number_or_a_mapping():
    assert parse_config({"budget": 0.25}).budget.fraction == 0.25
    config = parse_config({"budget": {"fraction": 0.3, "enforcement": "wall"}})
    assert (config.budget.fraction, config.budget.enforcement) == (0.3, "wall")


def test_bits_are_sorted_and_weight_only_is_an_empty_list():
    config = parse_config({"quantization": {"weight_bits": [8, 2, 4], "activation_bits": []}})
    assert config.quantization.weight_bits == [2, 4, 8]
    assert config.quantization.weight_only


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"agnt": {}}, "unknown key 'agnt'"),
        ({"agent": {"episodes": "many"}}, "key 'agent.episodes': input should be a valid integer, got 'many'"),
        ({"agent": {"episodes": 0}}, "key 'agent.episodes': input should be greater than 0"),
        ({"quantization": {"weight_bits": [1, 4]}}, "must be among [2, 3, 4, 5, 6, 7, 8, 16, 32]"),
        ({"quantization": {"weight_bits": []}}, "needs at least one bit-width"),
        ({"quantization": {"include": "("}}, "key 'quantization.include': not a valid regular expression"),
        ({"quantization": {"pin": {"first": [8]}}}, "must be [w_bits, a_bits]"),
        ({"hardware": {"metric": "speed"}}, "key 'hardware.metric'"),
        ({"hardware": {"table": "missing.npy"}}, "hardware.table file 'missing.npy' does not exist"),
        ({"model": {"weights": "missing.pt"}}, "model.weights file 'missing.pt' does not exist"),
        ({"budget": -0.5}, "key 'budget.fraction': input should be greater than 0"),
        ({"proxy": {"metric": "top5"}}, "key 'proxy.metric'"),
        ([1, 2], "expected a mapping of sections"),
    ],
)
def test_invalid_configs_are_one_line_errors_naming_the_key(data, message):
    with pytest.raises(UserError) as info:
        parse_config(data)
    text = str(info.value)
    assert message in text
    assert "\n" not in text


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_yaml_round_trip_and_overrides(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("seed: 3\nbudget: 0.35\nagent: {name: td3, episodes: 20}\noutput: runs/x\n")
    config = load_config(path)
    assert isinstance(config, RunConfig)
    again = tmp_path / "again.yaml"
    again.write_text(config.to_yaml())
    assert load_config(again) == config
    changed = config.with_overrides(**{"agent.episodes": 7, "budget.fraction": 0.2})
    assert (changed.agent.episodes, changed.budget.fraction, changed.seed) == (7, 0.2, 3)
    with pytest.raises(UserError, match="agent.episodes"):
        config.with_overrides(**{"agent.episodes": -1})
