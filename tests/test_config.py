"""Tests for components.platform.config and components.platform.params: strict typed loading, overrides,
describe, and per-stage loading."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml

from components.platform.config import (
    apply_overrides,
    build_config,
    describe,
    option,
    read_params,
    to_dict,
)
from components.platform.errors import ConfigError, GenPRMError
from components.platform.params import SECTION_CLASSES, load_params, load_value, section_class, sections
from components.stages.bootstrap import BootstrapConfig
from components.stages.prepare import PrepareConfig
from components.world.synthetic import SyntheticConfig


@pytest.fixture
def params_file(repo_root: Path, tmp_path: Path) -> Path:
    """A copy of the shipped params.yaml that a test may edit."""
    path = tmp_path / "params.yaml"
    path.write_text((repo_root / "params.yaml").read_text())
    return path


def _edit(path: Path, dotted: str, value: Any) -> Path:
    """Set ``dotted`` (``a.b.c``) in the YAML file at ``path`` to ``value``, writing it back."""
    data = yaml.safe_load(path.read_text())
    *parents, last = dotted.split(".")
    node = data
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    path.write_text(yaml.safe_dump(data))
    return path


def _leaf_keys(cls: type, prefix: str) -> set[str]:
    """Every dotted leaf key of ``cls``, walking nested and optional (``X | None``) sections."""
    keys: set[str] = set()
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        hint = hints[field.name]
        if dataclasses.is_dataclass(hint):
            keys |= _leaf_keys(hint, key + ".")  # type: ignore[arg-type]
            continue
        keys.add(key)
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            for arg in typing.get_args(hint):
                if dataclasses.is_dataclass(arg):
                    keys |= _leaf_keys(arg, key + ".")  # type: ignore[arg-type]
    return keys


def _all_fields(cls: type, prefix: str) -> list[tuple[str, dataclasses.Field[Any]]]:
    """(dotted key, field) for every field of ``cls`` and of every config class nested in it."""
    out = []
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        key = f"{prefix}{field.name}"
        out.append((key, field))
        hint = hints[field.name]
        for arg in (hint, *typing.get_args(hint)):
            if dataclasses.is_dataclass(arg):
                out.extend(_all_fields(arg, key + "."))  # type: ignore[arg-type]
    return out


# ------------------------------------------------------------------------------------ the shipped file


def test_shipped_params_load_cleanly(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    assert set(params) == set(SECTION_CLASSES)
    for name, cls in sections().items():
        assert isinstance(params[name], cls)
    raw = read_params(repo_root / "params.yaml")
    assert set(raw) == set(SECTION_CLASSES), "params.yaml should spell out every section"


def test_shipped_params_round_trip(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    for name, cls in sections().items():
        assert build_config(cls, to_dict(params[name]), name) == params[name]


def test_a_stage_loads_only_its_sections(repo_root: Path) -> None:
    """A stage builds only the sections it runs, so loading them imports no other stage."""
    path = repo_root / "params.yaml"
    overrides = ["prepare.seed=3", "bootstrap.train.steps=5"]
    params = load_params(path, overrides, ["bootstrap", "world"])
    assert set(params) == {"bootstrap", "world"} and params["bootstrap"].train.steps == 5
    assert load_value(path, overrides, "prepare.output_dir", str) == "data/prepared"
    assert load_value(path, overrides, "prepare.seed", int) == 3
    with pytest.raises(ConfigError, match=r"unknown params section 'bootstrapp'"):
        load_params(path, [], ["bootstrapp"])
    with pytest.raises(ConfigError, match=r"missing key 'prepare.nothing'"):
        load_value(path, [], "prepare.nothing", str)
    code = (
        "import sys; from pathlib import Path; from components.platform.params import load_params; "
        f"load_params(Path({str(path)!r}), [], ['rollout', 'quality']); "
        "print(sorted(m for m in sys.modules if m.startswith('components.stages.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['components.stages.rollout']"


# ------------------------------------------------------------------------------------ unknown keys


@pytest.mark.parametrize(
    ("dotted", "where", "key"),
    [
        ("prepare.bogus", "prepare", "bogus"),
        ("bootstrap.model.bogus", "bootstrap.model", "bogus"),
        ("bootstrap.train.stepz", "bootstrap.train", "stepz"),
        ("prepare.file.pth", "prepare.file", "pth"),
        ("world.max_opz", "world", "max_opz"),
    ],
)
def test_unknown_key_in_file_names_section_and_key(
    params_file: Path, dotted: str, where: str, key: str
) -> None:
    _edit(params_file, dotted, 1)
    with pytest.raises(ConfigError, match=rf"^{where}: unknown key '{key}' \(known keys: "):
        load_params(params_file)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("prepare.bogus=1", r"^prepare: unknown key 'bogus'"),
        ("bootstrap.model.bogus=1", r"^bootstrap\.model: unknown key 'bogus'"),
        ("prepare.hf.bogus=1", r"^prepare\.hf: unknown key 'bogus'"),
    ],
)
def test_unknown_key_in_override(params_file: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(params_file, [override])


def test_unknown_key_lists_known_keys(params_file: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(params_file, ["bootstrap.model.bogus=1"])
    assert "hidden_size" in str(info.value) and "num_layers" in str(info.value)


def test_config_errors_are_user_errors() -> None:
    assert issubclass(ConfigError, GenPRMError)


# -------------------------------------------------------------------------------------------- types


@pytest.mark.parametrize(
    ("dotted", "value", "message"),
    [
        ("prepare.seed", "abc", r"prepare\.seed: expected int, got 'abc'"),
        ("prepare.seed", True, r"prepare\.seed: expected int, got True"),
        ("prepare.seed", 1.5, r"prepare\.seed: expected int, got 1\.5"),
        ("prepare.num_problems", [1], r"prepare\.num_problems: expected int"),
        ("prepare.max_problems", "many", r"prepare\.max_problems: expected int, got 'many'"),
        ("prepare.test_fraction", "abc", r"prepare\.test_fraction: expected float, got 'abc'"),
        ("prepare.test_fraction", False, r"prepare\.test_fraction: expected float"),
        ("bootstrap.train.bf16_autocast", 1, r"bootstrap\.train\.bf16_autocast: expected bool, got 1"),
        ("bootstrap.train.lr", "fast", r"bootstrap\.train\.lr: expected float, got 'fast'"),
        ("bootstrap.model", 3, r"bootstrap\.model: expected a mapping, got int"),
        ("prepare.file", "x.jsonl", r"prepare\.file: expected a mapping, got str"),
        ("world.ops", "+", r"world\.ops: expected a list"),
        ("prepare.file.metadata_fields", "level", r"prepare\.file\.metadata_fields: expected a list"),
    ],
)
def test_wrong_type_names_the_key(params_file: Path, dotted: str, value: Any, message: str) -> None:
    _edit(params_file, dotted, value)
    with pytest.raises(ConfigError, match=message):
        load_params(params_file)


def test_quoted_number_in_yaml_is_not_an_int(params_file: Path) -> None:
    params_file.write_text(params_file.read_text().replace("seed: 0", 'seed: "abc"', 1))
    with pytest.raises(ConfigError, match=r"prepare\.seed: expected int, got 'abc'"):
        load_params(params_file)


def test_int_accepted_as_float(params_file: Path) -> None:
    params = load_params(params_file, ["bootstrap.train.lr=1", "prepare.test_fraction=0"])
    assert params["bootstrap"].train.lr == 1.0 and isinstance(params["bootstrap"].train.lr, float)
    assert isinstance(params["prepare"].test_fraction, float)


@pytest.mark.parametrize(("text", "value"), [("1e-3", 1e-3), ("2E-6", 2e-6), ("-5e2", -500.0), (".5", 0.5)])
def test_exponent_floats_without_dot(params_file: Path, text: str, value: float) -> None:
    # YAML 1.1 (PyYAML) reads 1e-3 as a string; learning rates are written that way.
    params = load_params(params_file, [f"bootstrap.train.lr={text}"])
    assert params["bootstrap"].train.lr == pytest.approx(value)
    # only the first occurrence: bootstrap.train.lr (train.lr has the same default)
    params_file.write_text(params_file.read_text().replace("lr: 0.003", f"lr: {text}", 1))
    assert load_params(params_file)["bootstrap"].train.lr == pytest.approx(value)


def test_number_accepted_as_string(params_file: Path) -> None:
    params = load_params(params_file, ["prepare.output_dir=2024"])
    assert params["prepare"].output_dir == "2024"


def test_optional_value_accepts_null(params_file: Path) -> None:
    params = load_params(params_file, ["prepare.max_problems=50", "prepare.file=null"])
    assert params["prepare"].max_problems == 50
    assert params["prepare"].file is None


def test_list_items_are_checked(params_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"world\.ops\[1\]: '%' is not one of '\+', '-', '\*', '/'"):
        load_params(params_file, ["world.ops=['+', '%']"])


# ----------------------------------------------------------------------------------------- Literal


@pytest.mark.parametrize(
    ("override", "where", "choices"),
    [
        ("prepare.source=web", "prepare.source", ["'synthetic'", "'file'", "'hf'"]),
        ("bootstrap.model.architecture=gpt2", "bootstrap.model.architecture", ["'qwen2'", "'llama'"]),
        ("prepare.file.format=csv", "prepare.file.format", ["'auto'", "'jsonl'", "'parquet'"]),
    ],
)
def test_literal_violation_names_the_choices(
    params_file: Path, override: str, where: str, choices: list[str]
) -> None:
    with pytest.raises(ConfigError) as info:
        load_params(params_file, [override])
    message = str(info.value)
    assert message.startswith(f"{where}: ")
    assert "is not one of" in message
    for choice in choices:
        assert choice in message


# ------------------------------------------------------------------------------ sections and the file


def test_missing_section_takes_defaults(params_file: Path) -> None:
    params_file.write_text(yaml.safe_dump({"world": {}}))
    assert load_params(params_file, [], ["prepare"])["prepare"] == PrepareConfig()


def test_missing_required_key() -> None:
    @dataclasses.dataclass(frozen=True)
    class Needs:
        path: str = option(help="A required path.")
        size: int = option(3, help="An optional size.")

    with pytest.raises(ConfigError, match=r"^demo: missing required key 'path'"):
        build_config(Needs, {"size": 4}, "demo")
    assert build_config(Needs, {"path": "p"}, "demo") == Needs(path="p", size=3)
    assert describe(Needs, "demo.")[0] == ("demo.path", "(required)", "A required path.")


def test_unknown_section(params_file: Path) -> None:
    _edit(params_file, "rolout.num_paths", 4)
    with pytest.raises(
        ConfigError, match=r"unknown section 'rolout' \(known: world, quality, prepare, bootstrap, rollout"
    ):
        load_params(params_file)


def test_unknown_section_from_override(params_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown section 'prepar'"):
        load_params(params_file, ["prepar.seed=1"])


def test_section_not_a_mapping(params_file: Path) -> None:
    params_file.write_text("prepare: 3\n")
    with pytest.raises(ConfigError, match=r"^prepare: expected a mapping, got int"):
        load_params(params_file)


@pytest.mark.parametrize("text", ["prepare: [unclosed\n", "prepare:\n  seed: 1\n seed: 2\n", "a: b: c\n"])
def test_malformed_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_params(path)


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- prepare\n- world\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: top level must be a mapping"):
        load_params(path)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml: params file not found"):
        load_params(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------- overrides


def test_override_typed_as_yaml_scalars() -> None:
    result = apply_overrides({}, ["a.b=3", "a.c=0.5", "a.d=true", "a.e=text", "a.f='3'", "x.y=null"])
    assert result == {"a": {"b": 3, "c": 0.5, "d": True, "e": "text", "f": "3"}, "x": {"y": None}}
    assert type(result["a"]["b"]) is int


def test_override_nested_and_non_mutating() -> None:
    params: dict[str, Any] = {"bootstrap": {"train": {"steps": 1500, "lr": 0.003}, "seed": 1}}
    result = apply_overrides(params, ["bootstrap.train.steps=5", "bootstrap.model.hidden_size=64"])
    assert result["bootstrap"]["train"] == {"steps": 5, "lr": 0.003}
    assert result["bootstrap"]["model"] == {"hidden_size": 64}
    assert params["bootstrap"]["train"]["steps"] == 1500, "the input must not change"
    assert "model" not in params["bootstrap"]


def test_override_value_details() -> None:
    result = apply_overrides({}, ["a.b=x=y", "a.c=", "a.d=[1, 2]", "a.e={k: v}", "a.f=../x/y.jsonl"])
    assert result["a"] == {"b": "x=y", "c": "", "d": [1, 2], "e": {"k": "v"}, "f": "../x/y.jsonl"}


def test_later_override_wins() -> None:
    assert apply_overrides({}, ["a.b=1", "a.b=2"]) == {"a": {"b": 2}}


def test_override_into_null_section(params_file: Path) -> None:
    # params.yaml ships `hf: null`; `--set prepare.hf.path=...` must still work.
    params = load_params(params_file, ["prepare.hf.path=some/dataset", "prepare.hf.revision=abc123"])
    hf = params["prepare"].hf
    assert hf is not None and (hf.path, hf.revision, hf.split) == ("some/dataset", "abc123", "test")


def test_override_through_a_scalar_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"'seed' is not a section"):
        apply_overrides({"prepare": {"seed": 0}}, ["prepare.seed.x=1"])


@pytest.mark.parametrize(
    "item", ["prepare.seed", "prepare.seed:3", "seed=3", "prepare..seed=3", ".seed=3", "=3"]
)
def test_malformed_override(item: str) -> None:
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        apply_overrides({}, [item])


def test_override_type_errors_name_the_key(params_file: Path) -> None:
    with pytest.raises(ConfigError, match=r"bootstrap\.train\.steps: expected int, got 'five'"):
        load_params(params_file, ["bootstrap.train.steps=five"])


# ------------------------------------------------------------------------------- describe and frozen


@pytest.mark.parametrize("name", list(SECTION_CLASSES))
def test_describe_covers_every_field(name: str) -> None:
    rows = describe(section_class(name), prefix=f"{name}.")
    keys = [key for key, _, _ in rows]
    assert len(keys) == len(set(keys)), "no key twice"
    assert set(keys) == _leaf_keys(section_class(name), f"{name}.")
    for key, default, text in rows:
        assert default, key
        assert text.strip(), f"{key} has no help text"


def test_describe_includes_optional_sections() -> None:
    keys = {key for key, _, _ in describe(PrepareConfig, "prepare.")}
    assert {"prepare.file", "prepare.file.path", "prepare.file.answer_format"} <= keys
    assert {"prepare.hf", "prepare.hf.revision", "prepare.hf.split"} <= keys
    bootstrap = {key for key, _, _ in describe(BootstrapConfig, "bootstrap.")}
    assert {"bootstrap.train.steps", "bootstrap.model.hidden_size", "bootstrap.eval.temperature"} <= bootstrap


def test_describe_defaults() -> None:
    rows = {key: default for key, default, _ in describe(SyntheticConfig, "world.")}
    assert rows["world.min_ops"] == "2"
    assert rows["world.ops"] == repr(["+", "-", "*", "/"])


@pytest.mark.parametrize("name", list(SECTION_CLASSES))
def test_every_field_has_help(name: str) -> None:
    for key, field in _all_fields(section_class(name), f"{name}."):
        assert str(field.metadata.get("help", "")).strip(), f"{key} has no help text"


@pytest.mark.parametrize("name", list(SECTION_CLASSES))
def test_configs_are_frozen(repo_root: Path, name: str) -> None:
    cfg = load_params(repo_root / "params.yaml")[name]
    field = dataclasses.fields(cfg)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(cfg, field, None)


def test_nested_configs_are_frozen(repo_root: Path) -> None:
    params = load_params(repo_root / "params.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        params["bootstrap"].train.steps = 1  # type: ignore[misc]
    file_cfg = params["prepare"].file
    assert file_cfg is not None
    with pytest.raises(dataclasses.FrozenInstanceError):
        file_cfg.path = "x"  # type: ignore[misc]


def test_list_defaults_are_not_shared() -> None:
    first, second = SyntheticConfig(), SyntheticConfig()
    assert first.ops == second.ops and first.ops is not second.ops


# -------------------------------------------------------------------------------- range validation


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("world.min_ops=5", r"world\.min_ops/max_ops"),
        ("world.min_ops=1", r"world\.min_ops/max_ops"),
        ("world.max_ops=7", r"world\.min_ops/max_ops"),
        ("world.operand_max=0", r"world\.operand_max: must be at least 1"),
        ("world.value_max=5", r"world\.value_max: must be at least start_max"),
        ("world.ops=[]", r"world\.ops: at least one operation"),
    ],
)
def test_world_ranges(params_file: Path, override: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_params(params_file, [override])


def test_literal_helper_rejects_near_misses() -> None:
    @dataclasses.dataclass(frozen=True)
    class Mode:
        mode: Literal["a", "b"] = option("a", help="A mode.")

    with pytest.raises(ConfigError, match=r"^m\.mode: 'A' is not one of 'a', 'b'"):
        build_config(Mode, {"mode": "A"}, "m")
    with pytest.raises(ConfigError, match=r"^m: expected a mapping, got list"):
        build_config(Mode, ["a"], "m")
    assert build_config(Mode, None, "m") == Mode()
