"""Agents written outside the package: ``run_search(agent=...)`` and a ``SearchAgent`` entering the leaderboard as
an object, a factory or an import path (``benchmarks/leaderboard/SUBMITTING.md``)."""

from __future__ import annotations

import pytest

from agents.search import SearchConfig, run_search
from ajpq_env.records import read_records
from benchmarks.leaderboard import LeaderboardConfig, read_rows, resolve_entrant, run_leaderboard
from benchmarks.leaderboard.example_agent import EvolutionStrategy

FIRST = "synthetic-mobilenet_v2/size-0.125"
EXAMPLE = "benchmarks.leaderboard.example_agent:EvolutionStrategy"


def test_a_searchagent_object_enters_a_leaderboard_run(tmp_path):
    agent = EvolutionStrategy(sigma=0.2)
    config = LeaderboardConfig(suite="smoke", entries=[FIRST], agents=["random", agent], seeds=[0], episodes=3,
                               finetune_epochs=1, finetune_samples=16, out=str(tmp_path / "lb"))
    outcome = run_leaderboard(config)
    assert not outcome.failed and not outcome.interrupted
    rows = {r.agent: r for r in read_rows(tmp_path / "lb" / "leaderboard.csv")}
    assert set(rows) == {"random", "example-es"}
    mine = rows["example-es"]
    assert mine.validated and mine.episodes == 3 and mine.resource_ratio <= mine.target
    assert 0.0 <= mine.test_metric <= 1.0 and mine.finetune_epochs == 1
    episodes = list(read_records(tmp_path / "lb" / mine.run / "episodes.csv"))  # a real ajpq search directory
    assert [e.agent for e in episodes] == ["example-es"] * 3 and episodes[mine.best_episode].metric == mine.metric
    assert agent.env is None  # the object handed in was copied, not used
    assert "| example-es |" in outcome.table


def test_an_import_path_or_a_factory_enters_too():
    assert resolve_entrant(EXAMPLE).name == "example-es" and resolve_entrant(EXAMPLE).source == EXAMPLE
    entrant = resolve_entrant(lambda: EvolutionStrategy(name="es-factory"))
    assert entrant.name == "es-factory" and entrant.build().name == "es-factory"
    assert resolve_entrant("ajpq").name == "td3-twolevel" and not resolve_entrant("ajpq").custom  # registry alias


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("benchmarks.leaderboard.example_agent:Nope", "has no 'Nope'"),
        ("no_such_module_xyz:Agent", "cannot import the agent"),
        ("benchmarks.leaderboard.example_agent:", "'module:attr'"),
        ("json:dumps", "cannot build the agent with no arguments"),
        ("benchmarks.leaderboard.suites:SUITES", "not a SearchAgent"),
        (lambda: 42, "returned a int, not a SearchAgent"),
        (lambda: EvolutionStrategy(name="random"), "a name of the registry"),
    ],
)
def test_what_is_not_an_agent_is_refused_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=message):
        resolve_entrant(spec)


def test_an_agent_object_that_workers_cannot_receive_is_refused():
    with pytest.raises(ValueError, match="cannot be sent to worker processes"):
        LeaderboardConfig(suite="smoke", agents=[lambda: EvolutionStrategy()], workers=2)
    with pytest.raises(ValueError, match="two agents are named 'example-es'"):
        LeaderboardConfig(suite="smoke", agents=[EXAMPLE, EvolutionStrategy(sigma=0.1)])


def test_run_search_takes_an_agent_object_and_resumes_it(tmp_path):
    base = {"env": "synthetic", "episodes": 4, "seed": 3, "progress": False, "checkpoint_every": 2}

    def stop_at_two(record):
        if record.episode == 2:  # a checkpoint was written after episode 2
            raise KeyboardInterrupt

    cut = run_search(SearchConfig(**base, out=str(tmp_path / "cut")), agent=EvolutionStrategy(), on_episode=stop_at_two)
    assert cut.interrupted and cut.episodes == 3
    resumed = run_search(SearchConfig(**base, out=str(tmp_path / "cut"), resume=True), agent=EvolutionStrategy)
    straight = run_search(SearchConfig(**base, out=str(tmp_path / "straight")), agent=EvolutionStrategy())
    assert not resumed.interrupted and resumed.episodes == straight.episodes == 4
    assert resumed.best.recipe == straight.best.recipe and resumed.best.agent == "example-es"
    with pytest.raises(ValueError, match="a name of the registry"):
        run_search(SearchConfig(**base, out=str(tmp_path / "x")), agent=EvolutionStrategy(name="random"))
    with pytest.raises(TypeError, match="SearchAgent or a zero-argument factory"):
        run_search(SearchConfig(**base, out=str(tmp_path / "y")), agent="random")
