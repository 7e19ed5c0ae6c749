"""Config files, overrides and method defaults; errors name the field path and never show a traceback."""

import pytest

from loqi_core.config import RunConfig, parse_override, resolve_config, resolve_run_config
from loqi_core.errors import ConfigError


def test_toml_file_and_overrides_layer_in_order(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('degrade = "qp40"\n[model]\nmethod = "tiny"\n[distill]\nlr = 1e-4\nloss = "ickd"\n')
    config = resolve_config(path, {"distill.lr": 3e-5, "eval.recall": [1, 5]}, method_defaults={"distill.lr": 9.0, "distill.max_steps": 7})
    assert config.degrade == "qp40" and config.model.method == "tiny"
    assert config.distill.lr == 3e-5  # flag beats file beats method default
    assert config.distill.max_steps == 7  # method default where nothing else speaks
    assert config.eval.recall == [1, 5]
    assert config.distill.gamma == 0.99999  # paper default


def test_yaml_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model:\n  method: tiny\n  image_size: [64, 48]\neval:\n  clean_database: true\n")
    config = resolve_config(path)
    assert config.model.image_size == (64, 48) and config.eval.clean_database


def test_typo_and_bad_value_are_reported_as_field_paths(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text("[distill]\nlearning_rate = 1e-4\nplaces_per_batch = 0\n")
    with pytest.raises(ConfigError) as info:
        resolve_config(path)
    message = str(info.value)
    assert "distill.learning_rate: Extra inputs are not permitted" in message
    assert "distill.places_per_batch: Input should be greater than or equal to 1" in message


def test_unparseable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[distill\n")
    with pytest.raises(ConfigError, match="bad.toml: cannot parse"):
        resolve_config(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match="unknown config format"):
        (tmp_path / "x.ini").write_text("")
        resolve_config(tmp_path / "x.ini")


def test_override_parsing():
    assert parse_override("distill.lr=1e-5") == ("distill.lr", 1e-5)
    assert parse_override("eval.test=[demo, nordland]") == ("eval.test", ["demo", "nordland"])
    with pytest.raises(ConfigError, match="section.key=value"):
        parse_override("distill.lr")


def test_on_off_overrides_reach_choice_and_boolean_fields():
    """YAML 1.1 reads `off` as false: `-s distill.channels_last=off` must still choose "off", and booleans still parse."""
    from loqi_core.config import resolve_config

    overrides = dict(parse_override(t) for t in ("distill.channels_last=off", "distill.augment=off", "eval.cache=yes"))
    config = resolve_config(None, overrides)
    assert config.distill.channels_last == "off"
    assert config.distill.augment is False and config.eval.cache is True


def test_method_run_defaults_apply(tmp_path):
    from loqi_core.hooks.specs import AggregatorSpec, EncoderSpec
    from loqi_core.testing import isolated_plugins
    from loqi_core.testing.tiny import tiny_plugin

    class Defaults:
        @staticmethod
        def loqi_register_encoders(register):
            register(EncoderSpec("fast", lambda p: None, run_defaults={"distill.lr": 5e-5, "distill.batch_size": 16}))

        @staticmethod
        def loqi_register_aggregators(register):
            register(AggregatorSpec("fast", lambda p, in_channels: None))

    from loqi_core.plugin import hookimpl

    Defaults.loqi_register_encoders = hookimpl(Defaults.loqi_register_encoders)
    Defaults.loqi_register_aggregators = hookimpl(Defaults.loqi_register_aggregators)
    with isolated_plugins(("tiny", tiny_plugin), ("fast", Defaults), entry_points=False):
        config = resolve_run_config(overrides={"model.method": "fast", "distill.batch_size": 8})
    assert config.distill.lr == 5e-5 and config.distill.batch_size == 8
    assert isinstance(config, RunConfig)
