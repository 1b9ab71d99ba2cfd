from __future__ import annotations

import pytest

from exgra.config import Section, apply_overrides, dump_config, load_config, parse_overrides, read_yaml
from exgra.errors import ConfigError


class Inner(Section):
    lr: float = 1e-3
    steps: int = 10


class Outer(Section):
    name: str = "tiny"
    train: Inner = Inner()


def test_defaults_yaml_overrides_precedence(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\ntrain:\n  lr: 2e-5\n  steps: 3\n")
    config = load_config(Outer, path, ["train.steps=7"])
    assert config.name == "from-yaml"
    assert config.train.lr == pytest.approx(2e-5)
    assert config.train.steps == 7


def test_wrong_key_names_key_and_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(Outer, None, ["train.stpes=3"])
    message = str(info.value)
    assert "train.stpes" in message and "did you mean 'steps'" in message and "lr, steps" in message


def test_wrong_type_is_reported():
    with pytest.raises(ConfigError, match="train.steps"):
        apply_overrides(Outer(), ["train.steps=many"])


def test_parse_overrides_types_and_errors():
    assert parse_overrides(["a.b=3", "a.c=true", "d=[1, 2]"]) == {"a": {"b": 3, "c": True}, "d": [1, 2]}
    with pytest.raises(ConfigError, match="key.sub=value"):
        parse_overrides(["novalue"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        read_yaml(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        read_yaml(scalar)


def test_dump_round_trip(tmp_path):
    config = apply_overrides(Outer(), ["train.lr=0.5"])
    dump_config(config, tmp_path / "resolved.yaml")
    assert load_config(Outer, tmp_path / "resolved.yaml") == config


def test_cli_version_and_help(run_exgra):
    from exgra import __version__

    result = run_exgra("--version")
    assert result.exit_code == 0 and __version__ in result.stdout
    result = run_exgra("--help")
    assert result.exit_code == 0 and "Research use only" in result.stdout


def test_cli_usage_error_exit_code_2(run_exgra):
    result = run_exgra("no-such-command")
    assert result.exit_code == 2


def test_os_error_is_one_line_not_a_traceback(run_exgra, tmp_path, monkeypatch):
    import exgra.cli as cli

    def failing_app():
        raise PermissionError(13, "Permission denied", str(tmp_path / "out"))

    monkeypatch.setattr(cli, "build_command", lambda: failing_app)
    result = run_exgra("models")
    assert result.exit_code == 1
    assert "Permission denied" in result.stderr and str(tmp_path / "out") in result.stderr
    assert "Traceback" not in result.stderr


def test_training_config_help_names_every_shipped_recipe(run_exgra):
    import importlib.resources

    shipped = sorted(
        entry.name.removesuffix(".yaml")
        for entry in importlib.resources.files("exgra").joinpath("configs").iterdir()
        if entry.name.endswith(".yaml")
    )
    assert shipped
    for command in (("train", "stage2"), ("finetune",)):
        result = run_exgra(*command, "--help")
        assert result.exit_code == 0
        text = " ".join(result.stdout.replace("│", " ").split())
        missing = [name for name in shipped if name not in text]
        assert not missing, f"{' '.join(command)} --help does not name {missing}"
