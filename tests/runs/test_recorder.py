"""The recorder's rules (mpq_rl.runs.recorder): which episode is best, the Pareto front, and episodes.csv
truncation."""

from mpq_rl.search.episode import Episode
from mpq_rl.runs.recorder import ParetoFront, better, truncate_episodes


def episode(reward: float, proxy: float, ratio: float, within: bool = True) -> Episode:
    return Episode(
        reward=reward,
        policy={"a": (4, 8)},
        metrics={"top1": proxy},
        proxy=proxy,
        proxy_fp32=1.0,
        cost={"latency": ratio * 10},
        cost_ratio={"latency": ratio},
        within_budget=within,
    )


def test_best_is_the_higher_reward_then_the_cheaper():
    assert better(episode(0.9, 0.9, 0.5), episode(0.8, 0.95, 0.1), "latency")
    assert better(episode(0.9, 0.9, 0.4), episode(0.9, 0.9, 0.5), "latency")
    assert not better(episode(0.9, 0.9, 0.5), episode(0.9, 0.9, 0.5), "latency")  # a tie keeps the first


def test_pareto_front_keeps_only_undominated_points_sorted_by_cost():
    front = ParetoFront()
    assert front.add(1, episode(0, 0.90, 0.50), "latency")
    assert front.add(2, episode(0, 0.80, 0.30), "latency")
    assert not front.add(3, episode(0, 0.85, 0.60), "latency")  # dominated by episode 1
    assert not front.add(4, episode(0, 0.90, 0.50), "latency")  # equal to episode 1: not new
    assert not front.add(5, episode(0, float("nan"), 0.10), "latency")
    assert front.add(6, episode(0, 0.95, 0.45), "latency")  # dominates episode 1
    assert [(p["episode"], p["cost_ratio"], p["proxy"]) for p in front.points] == [(2, 0.30, 0.80), (6, 0.45, 0.95)]
    assert front.points[1]["policy"] == {"a": [4, 8]}


def test_truncation_keeps_the_header_and_the_first_rows(tmp_path):
    path = tmp_path / "episodes.csv"
    path.write_text("episode,reward\n1,0.5\n2,0.6\n3,0.7\n")
    truncate_episodes(path, 2)
    assert path.read_text() == "episode,reward\n1,0.5\n2,0.6\n"
    truncate_episodes(path, 0)
    assert path.read_text() == "episode,reward\n"
