from pathlib import Path

import pytest

from nextbest.config import load_settings
from nextbest.errors import ConfigError


def test_defaults_match_design():
    s = load_settings(environ={})
    assert s.features.tiers.platinum_share == 0.05
    assert s.bandit.control_share == 0.05
    assert [a.name for a in s.bandit.arms] == ["coupon", "installment", "certification"]
    assert s.mlflow_tracking_uri == "sqlite:///mlruns/mlflow.db"


def test_yaml_then_env_override(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bandit:\n  control_share: 0.2\nfeatures:\n  tiers:\n    dormant_days: 200\n")
    s = load_settings(cfg, environ={"NEXTBEST__BANDIT__CONTROL_SHARE": "0.1"})
    assert s.bandit.control_share == 0.1
    assert s.features.tiers.dormant_days == 200


def test_bad_value_names_the_field():
    with pytest.raises(ConfigError, match="bandit.control_share"):
        load_settings(environ={"NEXTBEST__BANDIT__CONTROL_SHARE": "2"})


def test_unknown_key_is_refused(tmp_path: Path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("bandit:\n  contol_share: 0.2\n")
    with pytest.raises(ConfigError, match="contol_share"):
        load_settings(cfg, environ={})


def test_missing_explicit_file_is_an_error(tmp_path: Path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "nope.yaml", environ={})


def test_default_arm_must_be_an_arm():
    with pytest.raises(ConfigError, match="default_arm"):
        load_settings(environ={"NEXTBEST__BANDIT__DEFAULT_ARM": "free_money"})


def test_text_settings_from_the_environment_stay_text(tmp_path: Path):
    # Read as YAML these became a mapping, an int and None: all three were refused.
    s = load_settings(environ={"NEXTBEST__STORE__REDIS_PREFIX": "nextbest:",
                               "NEXTBEST__BANDIT__CONTROL_SALT": "2024",
                               "NEXTBEST__PATHS__DATA_DIR": "~"})
    assert s.store.redis_prefix == "nextbest:"
    assert s.bandit.control_salt == "2024"
    assert s.paths.data_dir == Path.home()
    # Numbers, booleans and lists are still parsed.
    s = load_settings(environ={"NEXTBEST__SERVING__ACCESS_LOG": "false",
                               "NEXTBEST__FEATURES__WINDOWS_DAYS": "[7, 30]",
                               "NEXTBEST__STORE__BACKEND": "redis"})
    assert s.serving.access_log is False and s.features.windows_days == [7, 30]
    assert s.store.backend == "redis"


def test_places_under_the_data_dir_follow_it_unless_set(tmp_path: Path):
    s = load_settings(environ={"NEXTBEST__PATHS__DATA_DIR": str(tmp_path),
                               "NEXTBEST__PATHS__DECISION_LOG": "/srv/log.sqlite"})
    assert s.paths.raw_dir == tmp_path / "raw"
    assert s.paths.store_path == tmp_path / "online_store.sqlite"
    assert s.paths.decision_log == Path("/srv/log.sqlite")


def test_every_bad_value_is_named_at_once():
    with pytest.raises(ConfigError, match="bandit.control_share.*serving.port"):
        load_settings(environ={"NEXTBEST__BANDIT__CONTROL_SHARE": "2",
                               "NEXTBEST__SERVING__PORT": "0"})
