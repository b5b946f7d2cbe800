"""The simulator: seeded, driving the service's engine, and the ``simulate --json`` shape."""

from __future__ import annotations

import json

import numpy as np
import pytest

from experiments.runner import simulate
from experiments.simulator import SimulationConfig, make_stream, synthetic_population
from nextbest.cli import main


def test_same_seed_same_stream_and_numbers(settings):
    pop = synthetic_population(settings, 300, seed=5)
    again = synthetic_population(settings, 300, seed=5)
    assert pop.drop(columns=["tags"]).equals(again.drop(columns=["tags"]))
    config = SimulationConfig(decisions=500, seed=5)
    first, second = make_stream(settings, pop, config), make_stream(settings, pop, config)
    assert np.array_equal(first.expected_reward, second.expected_reward)
    assert np.array_equal(first.uniform, second.uniform)
    other = make_stream(settings, pop, SimulationConfig(decisions=500, seed=6))
    assert not np.array_equal(first.uniform, other.uniform)


def test_population_features_are_what_a_store_computes_from_few_orders(settings):
    pop = synthetic_population(settings, 2000, seed=4)
    one = pop[pop["frequency_total"] == 1]
    none = pop[pop["frequency_total"] == 0]
    assert set(one["coupon_share"].unique()) <= {0.0, 1.0}  # one order: a coupon or not
    assert (one["category_entropy"] == 0).all() and (none["category_entropy"] == 0).all()
    assert (none["coupon_share"] == 0).all() and (none["spend_trend"] == 0).all()
    buyers = pop[pop["frequency_total"] >= 2]
    assert (buyers["category_entropy"] <= np.log(buyers["frequency_total"]) + 1e-9).all()
    # still informative: coupon share follows price sensitivity among repeat buyers
    corr = np.corrcoef(buyers["coupon_share"], buyers["price_sensitivity"])[0, 1]
    assert corr > 0.4


def test_bandit_view_holds_store_columns_only(settings):
    from experiments.runner import user_views
    from experiments.simulator import TRAIT_COLUMNS

    view = user_views(synthetic_population(settings, 20, seed=4))[0]
    assert "spend_trend" in view.features and "coupon_share" in view.features
    assert not set(TRAIT_COLUMNS) & set(view.features)


def test_response_model_rewards_the_documented_arms(settings):
    pop = synthetic_population(settings, 2000, seed=1)
    stream = make_stream(settings, pop, SimulationConfig(decisions=20000, seed=1))
    arms = [a.name for a in settings.bandit.arms]
    ps = pop["price_sensitivity"].to_numpy()[stream.user_index]
    best = stream.expected_reward.argmax(axis=1)
    # Price-sensitive users are best served by coupons far more often than the others.
    coupon = arms.index("coupon")
    assert (best[ps > 0.7] == coupon).mean() > 2 * (best[ps < 0.3] == coupon).mean()


def test_drift_changes_the_response_only_after_the_shift(settings):
    pop = synthetic_population(settings, 300, seed=2)
    plain = make_stream(settings, pop, SimulationConfig(decisions=1000, seed=2))
    drift = make_stream(settings, pop, SimulationConfig(decisions=1000, seed=2, drift=True))
    assert drift.drift_index == 500
    assert np.array_equal(plain.probability[:500], drift.probability[:500])
    assert not np.allclose(plain.probability[500:], drift.probability[500:])


def test_engine_and_rule_policies_are_deterministic(settings, tmp_path):
    pop = synthetic_population(settings, 300, seed=3)
    config = SimulationConfig(decisions=600, seed=3)
    runs = [simulate(settings, pop, config, ["squarecb", "static", "random"])
            for _ in range(2)]
    for name in ("squarecb", "static", "random"):
        assert runs[0].metrics[name].cumulative_reward == runs[1].metrics[name].cumulative_reward
        assert np.array_equal(runs[0].traces[name].arm, runs[1].traces[name].arm)
    assert "oracle" in runs[0].traces and "oracle" not in runs[0].metrics
    assert runs[0].metrics["random"].regret > 0


def test_simulate_json_shape(settings, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "sim"
    code = main(["simulate", "--decisions", "400", "--users", "200", "--json", "--quiet",
                 "--no-mlflow", "--out", str(out), "--keep-logs", str(tmp_path / "logs")])
    assert code == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["policies"]) == {"random", "static", "epsilon", "squarecb", "service",
                                        "oracle"}
    # the service's configured chooser, measured against the oracle and the static rules
    assert payload["ratios"]["service"]["of_oracle"] > 0
    assert payload["ratios"]["static"]["vs_static"] == pytest.approx(1.0)
    for metrics in payload["policies"].values():
        for key in ("mean_reward_last", "cumulative_reward", "profit", "regret",
                    "conversion_rate", "arm_share", "arm_share_by_tier"):
            assert key in metrics
    assert payload["policies"]["oracle"]["regret"] == pytest.approx(0.0)
    assert (out / "simulation.json").is_file()
    assert {p.name for p in out.glob("*.png")} >= {"cumulative_reward.png", "regret.png",
                                                   "arm_share_squarecb.png"}
    assert (tmp_path / "logs" / "squarecb.sqlite").is_file()


def test_unknown_policy_is_refused(capsys):
    assert main(["simulate", "--decisions", "10", "--policies", "nope", "--no-mlflow"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err


def test_simulate_logs_one_parent_run_with_a_nested_run_per_policy(tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("NEXTBEST__MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NEXTBEST__PATHS__MLRUNS_DIR", str(tmp_path / "mlruns"))
    assert main(["simulate", "--decisions", "300", "--users", "100", "--quiet",
                 "--policies", "random,static,squarecb", "--out", str(tmp_path / "sim")]) == 0
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("simulation")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1
    assert {r.data.params["policy"] for r in children} == {"random", "static", "squarecb"}
    assert all("regret" in r.data.metrics for r in children)
    plots = {a.path for a in client.list_artifacts(parents[0].info.run_id, "plots")}
    assert "plots/cumulative_reward.png" in plots and "plots/regret.png" in plots


def test_json_reports_the_population_actually_used(settings):
    population = synthetic_population(settings, 40, seed=1)
    result = simulate(settings, population, SimulationConfig(decisions=50), ["random"])
    assert SimulationConfig().users != 40
    assert result.to_json()["users"] == 40


@pytest.mark.parametrize("kind", ["profit", "conversion"])
def test_the_table_shows_what_differs_and_says_what_last_20_percent_is(settings, kind):
    from experiments.cli import format_simulation

    bandit = settings.bandit.model_copy(update={"reward": settings.bandit.reward.model_copy(
        update={"kind": kind})})
    settings = settings.model_copy(update={"bandit": bandit})
    population = synthetic_population(settings, 100, seed=2)
    payload = simulate(settings, population, SimulationConfig(decisions=200),
                       ["random", "static"]).to_json()
    table = format_simulation(payload)
    header = next(line for line in table.splitlines() if line.startswith("policy"))
    columns = header.split()
    assert {"profit", "revenue", "cost", "regret", "reward/dec", "oracle"} <= set(columns)
    # Under the profit reward the reward is the profit: one column, not two equal ones.
    assert ("reward" in columns) == (kind == "conversion")
    assert "last 20%: the last 40 decisions" in table
    static = next(line for line in table.splitlines() if line.startswith("static"))
    assert static.split()[1] == f"{payload['policies']['static']['profit']:,.0f}"


def test_simulate_on_real_data_says_it_needs_synthetic_traits(tmp_path, capsys):
    (tmp_path / "raw").mkdir()  # imported real data: raw tables, features, no latent traits
    assert main(["simulate", "--data", str(tmp_path), "--no-mlflow"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latent traits" in err[0]
    assert "only a synthetic marketplace" in err[0] and "--latent-out" not in err[0]


def test_users_and_data_together_are_refused(tmp_path, capsys):
    assert main(["simulate", "--data", str(tmp_path), "--users", "30", "--no-mlflow"]) == 2
    assert "--users" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--decisions", "--users"])
def test_zero_decisions_or_users_is_a_one_line_usage_error(flag, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["simulate", flag, "0"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and f"argument {flag}: 0 is not a positive whole number" in err[0]


def test_students_never_get_an_installment_in_10000_simulated_decisions(settings, tmp_path):
    """A world where installments convert best for students: the bandit learning in it, and
    the oracle that knows it, never offer one to a student; non-students do get them."""
    import sqlite3

    from experiments.simulator import students

    population = synthetic_population(settings, 3000, seed=7)
    result = simulate(settings, population, SimulationConfig(decisions=10_000, seed=7),
                      ["squarecb"], log_dir=tmp_path)
    student = students(population)[result.stream.user_index].astype(bool)
    installment = result.arms.index("installment")
    best = result.stream.expected_reward.argmax(axis=1)
    assert student.sum() > 500
    assert (best[student] == installment).mean() > 0.9  # what a bandit would learn to do
    for name in ("squarecb", "oracle"):
        chosen = result.traces[name].arm
        assert (chosen[student] == installment).sum() == 0, name
        assert (chosen[~student] == installment).mean() > 0.03, name
    treated = student & ~result.traces["squarecb"].control
    first_student = population["user_id"][result.stream.user_index[treated.argmax()]]
    with sqlite3.connect(tmp_path / "squarecb.sqlite") as conn:
        reasons = [r for (r,) in conn.execute("SELECT reason FROM decisions WHERE user_id = ? "
                                               "AND control = 0", (first_student,))]
    assert reasons and all("installment removed: no credit: is_student == True" in r
                           for r in reasons)


def test_without_the_rule_the_oracle_lends_to_students(settings):
    """The same world with ``policy.no_credit_when`` empty: the red line is what stops it."""
    from experiments.simulator import students

    data = settings.model_dump()
    data["policy"]["no_credit_when"] = ""
    unguarded = type(settings).model_validate(data)
    population = synthetic_population(settings, 1000, seed=7)
    result = simulate(unguarded, population, SimulationConfig(decisions=2000, seed=7), [])
    student = students(population)[result.stream.user_index].astype(bool)
    chosen = result.traces["oracle"].arm[student & ~result.traces["oracle"].control]
    assert (chosen == result.arms.index("installment")).mean() > 0.9


def test_seeds_report_each_seed_and_the_spread_deterministically(tmp_path, capsys,
                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["simulate", "--decisions", "300", "--users", "100", "--seeds", "1,2", "--json",
            "--quiet", "--no-mlflow", "--policies", "static,service", "--out", str(tmp_path)]
    assert main(args) == 0
    first = json.loads(capsys.readouterr().out)
    assert main(args) == 0
    again = json.loads(capsys.readouterr().out)
    assert first["seeds"] == [1, 2] and set(first["per_seed"]) == {"1", "2"}
    service = first["spread"]["service"]["of_oracle"]
    values = [first["per_seed"][s]["ratios"]["service"]["of_oracle"] for s in ("1", "2")]
    assert service["min"] == min(values) and service["max"] == max(values)
    assert values[0] != values[1]  # each seed its own population and stream
    assert first["spread"] == again["spread"]  # the same seeds, the same numbers
