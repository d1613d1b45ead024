"""The run's dashboard read back from its TensorBoard events: the Custom Scalars layout, the Pareto view and the
bits heatmap redrawn as the search goes, the held-out table, and what mbppo logs of its learning."""

import io

import numpy as np
import pytest
from matplotlib import image as mpimg
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.custom_scalar import layout_pb2

from mpq_rl.agents import learning_board as agent_board
from mpq_rl.config import parse_config
from mpq_rl.runs import dashboard as search_board
from mpq_rl.runs.trainer import run_search

EPISODES = 24
ROUND = 4
SMALL = {"prior_episodes": 16, "model_episodes": 16, "candidates": 8, "evaluations_per_round": ROUND, "n_envs": 4}


@pytest.fixture(scope="module")
def mbppo_run(digits_model, tmp_path_factory, one_thread):
    folder = tmp_path_factory.mktemp("dashboards") / "run"
    config = parse_config(
        {"budget": 0.35, "agent": {"name": "mbppo", "episodes": EPISODES, "kwargs": SMALL}, "output": str(folder)}
    )
    result = run_search(config, progress=False)
    sizes = {"scalars": 0, "images": 0, "tensors": 0}
    return result, EventAccumulator(str(folder / "tb"), size_guidance=sizes).Reload()


def png(event) -> np.ndarray:
    return mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")


def test_pareto_view_and_heatmap_are_redrawn_at_each_quarter_and_at_the_end(mbppo_run):
    result, events = mbppo_run
    quarters = [EPISODES // 4 * i for i in range(1, 5)]
    for tag in (search_board.PARETO, search_board.HEATMAP):
        images = events.Images(tag)
        assert [i.step for i in images] == quarters, tag
        assert all(png(i).shape[:2] == (i.height, i.width) for i in images)
    # the heatmap grows with the layers: 1.5 in of margins and 0.28 in per layer (9 here), at 100 dpi
    heatmap = events.Images(search_board.HEATMAP)[-1]
    assert len(result.best["policy"]) == 9 and (heatmap.width, heatmap.height) == (1200, 402)


def test_held_out_table_names_each_policy_with_test_and_calibration_scores(mbppo_run):
    result, events = mbppo_run
    text = events.Tensors(f"{search_board.HELD_OUT}/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| policy | test top1 | calibration top1 | latency / W8A8 |" in text
    best = f"| **searched (best)** | {100 * result.best_test['top1']:.2f}% | {100 * result.best['proxy']:.2f}% |"
    assert best in text
    assert text.count("| uniform W") == len(result.uniform)


def test_layout_has_one_chart_per_proxy_metric_and_cost_ratio_and_the_agents_charts(mbppo_run):
    _, events = mbppo_run
    layout = layout_pb2.Layout()
    layout.ParseFromString(events.Tensors("custom_scalars__config__")[-1].tensor_proto.string_val[0])
    charts = {c.title: list(c.multiline.tag) for category in layout.category for c in category.chart}
    scalars = set(events.Tags()["scalars"])
    for metric in ("top1", "kl", "agreement", "cosine"):
        assert any(tags[0] == f"^proxy/{metric}$" for tags in charts.values()), metric
    assert charts["latency / W8A8 (budget 0.35; best so far too)"] == ["^cost_ratio/latency$", "^best/cost_ratio$"]
    # every chart of the layout draws something (no empty sections)
    import re

    for title, tags in charts.items():
        assert any(re.search(t, s) for t in tags for s in scalars), title


def test_mbppo_logs_its_surrogate_fit_proposals_and_ppo_losses(mbppo_run):
    result, events = mbppo_run
    scalars = set(events.Tags()["scalars"])
    sources = [agent_board.PROPOSALS.format(s) for s in agent_board.SOURCES]
    assert {agent_board.RANK_CORRELATION, agent_board.ABS_ERROR, *sources} <= scalars
    assert {"train/value_loss", "train/policy_gradient_loss", "train/approx_kl"} <= scalars
    # every evaluation is counted once, by where it came from, at the step of the evaluations so far
    total = sum(e.value for tag in sources for e in events.Scalars(tag))
    assert total == result.evaluations
    probes = events.Scalars(agent_board.PROPOSALS.format("probes"))
    assert probes[0].value == probes[0].step > 0
    assert all(-1.0 <= e.value <= 1.0 for e in events.Scalars(agent_board.RANK_CORRELATION))
    assert events.Images(agent_board.FIT)[-1].step == result.evaluations
