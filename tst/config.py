"""Config loading with Hydra's Compose API: the CLI, notebooks and tests get the same resolved config."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from hydra import compose, initialize_config_module
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tst.errors import TSTError
from tst.validate import check
from tst.workspace import folder_name

CONFIG_MODULE = "tst.configs"

# Which config groups stand for which kind of thing, for error messages ("unknown space 'foo'").
GROUP_NOUNS = {"space": "space"}

# Keys whose values become one folder of the workspace (<workspace_dir>/<space.name>/<stage>/<run_name>).
FOLDER_NAME_KEYS = ("run_name", "space.name")


def config_root() -> Path:
    """The folder holding the shipped Hydra configs (inside the installed package)."""
    return Path(str(resources.files(CONFIG_MODULE)))


def stages() -> list[str]:
    """Stages that have a primary config (`<stage>.yaml`)."""
    return sorted(p.stem for p in config_root().glob("*.yaml") if not p.stem.startswith("_"))


def groups() -> dict[str, list[str]]:
    """Config group -> its options, e.g. {"space": ["mesh", "procedural"]}."""
    return {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in sorted(config_root().iterdir())
        if d.is_dir() and not d.name.startswith("_")
    }


def override_value(value) -> str:
    """A Python value (from a resolved config) written as the value of a Hydra override, so that
    `key=<override_value(v)>` composes back to exactly `v`: None -> null, strings quoted, lists and
    mappings element by element."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(override_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ",".join(f"{k}:{override_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {value!r} as a Hydra override value")


def _check_group_choices(overrides: list[str]) -> None:
    """Name the bad option and the valid ones when an override picks a missing group option."""
    available = groups()
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if sep and key in available and value not in available[key]:
            noun = GROUP_NOUNS.get(key, key)
            raise TSTError(f"unknown {noun} '{value}': expected one of {', '.join(available[key])}")


# Settings groups with an `enabled` key that a bare boolean switches: `deploy.online=true` means
# `deploy.online.enabled=true` (the group's other keys keep their values).
SWITCHES = ("deploy.online",)


def _switches(overrides: list[str]) -> list[str]:
    """`<switch>=true|false` -> `<switch>.enabled=...`; every other override unchanged."""
    out = []
    for override in overrides:
        key, sep, value = override.partition("=")
        switched = sep and key in SWITCHES and value.lower() in ("true", "false")
        out.append(f"{key}.enabled={value.lower()}" if switched else override)
    return out


def load(stage: str, overrides: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """Compose and resolve the config of `stage` (e.g. "spaces") with Hydra `overrides`, then check every
    key's value (`tst.validate`; for `run`, every stage its experiment preset composes)."""
    if stage not in stages():
        raise TSTError(f"no config for stage '{stage}': expected one of {', '.join(stages())}")
    overrides = _switches(list(overrides))
    _check_group_choices(overrides)
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=CONFIG_MODULE, version_base="1.3"):
            cfg = compose(config_name=stage, overrides=overrides)
        OmegaConf.resolve(cfg)
    except (HydraException, OmegaConfBaseException, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        reason = lines[0] if lines else type(error).__name__
        cause = getattr(error, "__cause__", None)
        if cause is not None and str(cause).strip():
            reason += " " + str(cause).strip().splitlines()[0]
        raise TSTError(f"bad override for 'tst {stage}': {reason}") from None
    finally:
        GlobalHydra.instance().clear()
    for key in FOLDER_NAME_KEYS:  # refused at compose time, before any stage writes a thing
        value = OmegaConf.select(cfg, key)
        if value is not None:
            folder_name(value, key)
    check(stage, cfg)
    return cfg


def composed(stage: str, key: str, overrides: list[str] | tuple[str, ...] = ()) -> dict:
    """Section `key` of `tst <stage>`'s composed and checked config, as a plain dict: how benchmarks take
    a model preset (`composed("pretrain", "model", ["model=s"])`) through the same composition and rules
    as the stages, instead of reading its YAML file."""
    return OmegaConf.to_container(OmegaConf.select(load(stage, list(overrides)), key), resolve=True)


def expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Hydra multirun sweeps (`key=a,b`, `key=range(0,3)`) expanded into one override list per
    combination, in order; overrides without sweeps appear in every list."""
    from itertools import product

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise TSTError(f"bad override: {str(error).splitlines()[0]}") from None
    choices = []
    for override in parsed:
        key = override.get_key_element()
        if override.is_sweep_override():
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combination) for combination in product(*choices)]


def describe(stage: str) -> str:
    """Help text: the config groups with their options and the default config's keys."""
    cfg = load(stage)
    lines = ["Config groups (pick with group=option):"]
    for group, options in groups().items():
        if group in cfg:
            lines.append(f"  {group}: {', '.join(options)}")
    lines += ["", "Keys and defaults (override with key=value, e.g. space.seed=3):", OmegaConf.to_yaml(cfg)]
    return "\n".join(lines)
