"""Settings: defaults < config file < SNAPSHOP_* environment < overrides, and their documentation."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from snapshop.errors import SettingsError, SnapshopError
from snapshop.settings import BY_NAME, SETTINGS, load_settings

DOCS = Path(__file__).resolve().parents[1] / "docs" / "settings.md"


def write_config(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults(tmp_path):
    settings = load_settings(environ={})
    for setting in SETTINGS:
        assert getattr(settings, setting.name) == setting.default
    assert settings.k == 10 and settings.localize is True and settings.pooling == "gem"


def test_precedence_defaults_config_environment_overrides(tmp_path):
    config = write_config(tmp_path / "snap.toml", 'k = 3\nshortlist = 300\npooling = "rmac"\nlocalize = false\n')
    environ = {"SNAPSHOP_CONFIG": str(config), "SNAPSHOP_K": "5", "SNAPSHOP_SHORTLIST": "400"}

    settings = load_settings({"k": 7}, environ=environ)

    assert settings.k == 7  # override beats environment and config
    assert settings.shortlist == 400  # environment beats config
    assert settings.pooling == "rmac" and settings.localize is False  # config beats defaults
    assert settings.dim == 256  # default


def test_config_file_argument_wins_over_snapshop_config(tmp_path):
    chosen = write_config(tmp_path / "chosen.toml", "k = 4\n")
    other = write_config(tmp_path / "other.toml", "k = 9\n")
    assert load_settings(environ={"SNAPSHOP_CONFIG": str(other)}, config_file=chosen).k == 4


def test_local_snapshop_toml_is_read_when_present(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_settings(environ={}).k == 10
    write_config(tmp_path / "snapshop.toml", "k = 12\n")
    assert load_settings(environ={}).k == 12


def test_environment_is_read_from_os_environ_by_default(monkeypatch):
    monkeypatch.setenv("SNAPSHOP_BATCH_SIZE", "8")
    monkeypatch.setenv("SNAPSHOP_LOCALIZE", "off")
    settings = load_settings()
    assert settings.batch_size == 8 and settings.localize is False


def test_none_overrides_mean_not_given():
    assert load_settings({"k": None, "index": None}, environ={"SNAPSHOP_K": "6"}).k == 6


@pytest.mark.parametrize("text,expected", [("1", True), ("true", True), ("Yes", True), ("ON", True),
                                           ("0", False), ("false", False), ("no", False), ("off", False)])
def test_boolean_spellings(text, expected):
    assert load_settings(environ={"SNAPSHOP_LOCALIZE": text}).localize is expected


def test_types_are_converted():
    settings = load_settings({"box_threshold": "0.25"}, environ={"SNAPSHOP_DIM": "128", "SNAPSHOP_INDEX": "/x/y"})
    assert settings.dim == 128 and isinstance(settings.dim, int)
    assert settings.box_threshold == 0.25 and settings.index == "/x/y"


def test_replace_returns_a_copy():
    settings = load_settings(environ={})
    changed = settings.replace(k=3)
    assert changed.k == 3 and settings.k == 10


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        load_settings(environ={}).nope


# --- bad values --------------------------------------------------------------------------------


@pytest.mark.parametrize("name,value", [("SNAPSHOP_K", "ten"), ("SNAPSHOP_LOCALIZE", "maybe"),
                                        ("SNAPSHOP_BOX_THRESHOLD", "high"), ("SNAPSHOP_DIM", "2.5")])
def test_bad_environment_value(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={name: value})


def test_bad_config_value_names_the_file(tmp_path):
    config = write_config(tmp_path / "bad.toml", 'k = "many"\n')
    with pytest.raises(SettingsError, match="bad.toml"):
        load_settings(environ={}, config_file=config)


def test_bad_override_value():
    with pytest.raises(SettingsError, match="k"):
        load_settings({"k": "x"}, environ={})


def test_unknown_key_in_config(tmp_path):
    config = write_config(tmp_path / "typo.toml", "k = 3\nshortlsit = 100\n")
    with pytest.raises(SettingsError, match="shortlsit"):
        load_settings(environ={}, config_file=config)


def test_config_that_is_not_toml(tmp_path):
    config = write_config(tmp_path / "broken.toml", "k = = 3\n")
    with pytest.raises(SettingsError, match="TOML"):
        load_settings(environ={}, config_file=config)


def test_missing_config_file(tmp_path):
    with pytest.raises(SettingsError, match="cannot read"):
        load_settings(environ={"SNAPSHOP_CONFIG": str(tmp_path / "missing.toml")})


def test_settings_errors_are_user_errors():
    assert issubclass(SettingsError, SnapshopError)


@pytest.mark.parametrize("name,value", [
    ("pooling", "max"),        # not gap/gem/rmac: the first add would crash in pool() with a ValueError
    ("batch_size", "0"),       # range(..., 0) crashes in Backbone.feature_maps
    ("k", "0"),
    ("shortlist", "0"),
    ("bits", "100"),           # not a multiple of 8
    ("box_threshold", "1.5"),  # documented as 0-1
    ("max_pixels", "-1"),
])
def test_out_of_range_values_are_refused_when_loaded(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings(environ={BY_NAME[name].env_var: value})


# --- documentation ---------------------------------------------------------------------------


def test_every_setting_is_documented():
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"`([a-z_]+)`", text))
    missing = [setting.name for setting in SETTINGS if setting.name not in documented]
    assert not missing, f"{DOCS} does not document: {', '.join(missing)}"


def test_every_setting_documents_its_environment_variable():
    text = DOCS.read_text(encoding="utf-8")
    missing = [setting.env_var for setting in SETTINGS if f"`{setting.env_var}`" not in text]
    assert not missing, f"{DOCS} does not name: {', '.join(missing)}"
