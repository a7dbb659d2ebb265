"""`tst run`: the whole TST pipeline on one space, stage after stage, resumable.

collect -> tokenizers -> pretrain (each objective) -> transfer (each backbone x seed x fraction, all
three tasks on one backbone) -> deploy (the first pretrained backbone's specialist) -> report.

Each stage is the same command a person would type (`tst collect ...`), composed from the experiment's
override lists (configs/experiment/*.yaml). Run folders are named after a hash of what made them, so a
re-run finds the finished ones and skips them (a pretraining, transfer or probe whose stored config differs
from what the stage would use now, as after a default changed, is made again); a pretraining run killed
midway resumes from its last checkpoint. `Pipeline.execute` is the one place that decides, for every
stage, whether its folder is kept, resumed or made; inside each stage, `tst.stage.publish` lands the
finished folder (staged, manifest last, tracked). Like the CLI, this module imports the stages lazily: it
sits above them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.rule import Rule

from tst.config import load, override_value
from tst.pretrain.objectives import OBJECTIVES
from tst.errors import TSTError
from tst.workspace import fingerprint, read_manifest

console = Console(stderr=True)
OTHER_BACKBONES = ("scratch", "generalist")
# The config sections a transfer's results depend on: a finished one made with other values there is made
# again (the data section's reader settings and the transfer's inputs are in the folder name). A probe is
# checked on the same sections: it reads fewer of them, and takes seconds.
RESULT_SECTIONS = ("transfer", "model")
# Pretrained backbones that are an objective plus settings (a preset adds its own in experiment.variants):
# adapted TST continues 4M-21 B on the space.
VARIANTS = {"adapted": ["pretrain.objective=multimae", "pretrain.init=4m21-b"]}


def _name_hash(*parts) -> str:
    """8 hex digits of the parts' sha256: the suffix that tells apart runs of different settings."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:8]


def _finished(run_dir: Path) -> bool:
    return (run_dir / "manifest.json").is_file()


class Pipeline:
    """One `tst run`: the shared overrides (workspace, space, tracking) plus the experiment's lists."""

    def __init__(self, cfg: DictConfig):
        self.cfg, self.e = cfg, cfg.experiment
        space = OmegaConf.to_container(cfg.space, resolve=True)
        # The space's backend picks its config group; then every key of the run's space, so each stage
        # composes exactly the space `tst run` was given.
        self.shared = [f"workspace_dir={override_value(str(cfg.workspace_dir))}",
                       f"tracking.enabled={override_value(bool(cfg.tracking.enabled))}",
                       f"space={space['backend']}"] + [f"space.{k}={override_value(v)}" for k, v in space.items()]
        from tst.envs.registry import space_name

        self.space = space_name(cfg.space)
        self.root = Path(cfg.workspace_dir) / self.space
        self.timings: dict[str, float] = {}
        self.held_out_data: list[Path] = []  # experiment.held_out's datasets, once collected
        self.variants = VARIANTS | {str(k): [str(o) for o in v] for k, v in (self.e.get("variants") or {}).items()}
        for index, name in enumerate(self.e.objectives):
            if name not in OBJECTIVES and name not in self.variants:
                raise TSTError(f"experiment.objectives[{index}]: '{name}' is neither an objective "
                               f"({', '.join(OBJECTIVES)}) nor a variant ({', '.join(self.variants)})")
        for name in self.e.backbones:
            known = OBJECTIVES + tuple(self.variants) + OTHER_BACKBONES
            if name not in known:
                raise TSTError(f"experiment.backbones: '{name}' is not one of {', '.join(known)}")
            if name not in OTHER_BACKBONES and name not in self.e.objectives:
                raise TSTError(f"experiment.backbones: '{name}' is not pretrained (experiment.objectives: "
                               f"{', '.join(self.e.objectives)})")
        for name in self.e.objectives:  # a variant's published weights must be there before the first stage
            for init in (o.split("=", 1)[1] for o in self.variants.get(name, []) if o.startswith("pretrain.init=")):
                from tst.pretrain.adapted import INITS
                from tst.weights import published_weights_file

                if init in INITS:  # an unknown one is refused when check_presets composes the variant
                    published_weights_file(INITS[init], f"experiment.objectives: {name} (pretrain.init={init})")
        if self.e.get("deploy_backbone") and self.e.deploy_backbone not in self.e.backbones:
            raise TSTError(f"experiment.deploy_backbone: '{self.e.deploy_backbone}' is not among the transferred "
                           f"backbones (experiment.backbones: {', '.join(self.e.backbones)}); name one or null")

    def overrides(self, stage: str) -> list[str]:
        return self.shared + [str(o) for o in self.e.get(stage, [])]

    def execute(self, title: str, run_dir: Path, start: Callable[[], Path],
                reusable: Callable[[Path], bool] | None = None, resume: Callable[[], Path] | None = None,
                wanted: tuple[DictConfig, tuple[str, ...]] | None = None) -> Path:
        """The one way `tst run` runs a stage: a finished `run_dir` that `reusable` accepts (default: it holds
        a manifest) is kept and skipped; with `resume`, a folder killed after writing its config.json
        continues and one killed before is removed; otherwise `start` runs the stage. With `wanted` (the
        stage's config and the sections its results depend on), a finished folder made with other settings
        in those sections is made again in place. Times each title."""
        console.print(Rule(f"[bold]{title}"))
        began = time.perf_counter()
        changed = _changed_settings(run_dir, *wanted) if wanted is not None and _finished(run_dir) else []
        if changed:
            console.print(f"[yellow]{run_dir}[/yellow] was made with other settings ({'; '.join(changed)}): "
                          "running it again")
            shutil.rmtree(run_dir)
            run_dir = start()
        elif (reusable or _finished)(run_dir):
            console.print(f"{run_dir} is finished: skipped")
        elif resume is not None and (run_dir / "config.json").is_file():
            console.print(f"resuming {run_dir}")
            run_dir = resume()
        else:
            if resume is not None and run_dir.exists():  # killed before it wrote its config
                shutil.rmtree(run_dir)
            run_dir = start()
        self.timings[title] = round(time.perf_counter() - began, 1)
        return run_dir

    # --- stages: each builds its config and folder, then hands them to execute() -------------------
    def collect(self) -> Path:
        from tst.collect.run import run

        cfg = load("collect", self.overrides("collect"))
        return self.execute("collect", self.root / "data", lambda: run(cfg),
                            lambda data: _finished(data) and _same_dataset(read_manifest(data)["config"], cfg))

    def other_spaces(self) -> dict[str, tuple[list[str], list[str]]]:
        """The spaces besides the test space that the experiment collects: space name -> (its overrides,
        its splits): the eval split of each experiment.held_out space (scored, never trained on) and the
        pretrain split of each experiment.external space (mixed into pretraining by a variant's
        pretrain.external), both for a space in both lists (with the overrides of both). Each is the test
        space's collect settings with that space's overrides."""
        from tst.envs.registry import space_name

        spaces: dict[str, tuple[list[str], list[str]]] = {}
        for key, split in (("held_out", "eval"), ("external", "pretrain")):
            for index, overrides in enumerate(self.e.get(key) or []):
                overrides = [str(o) for o in overrides]
                try:
                    name = space_name(load("collect", self.overrides("collect") + overrides).space)
                except TSTError as error:
                    raise TSTError(f"experiment.{key}[{index}]: {error}") from None
                if name == self.space:
                    raise TSTError(f"experiment.{key}[{index}]: {name} is the test space; expected another space")
                known, splits = spaces.get(name, ([], []))
                spaces[name] = (known + [o for o in overrides if o not in known], splits + [split])
        return spaces

    def other_space_config(self, overrides: list[str], splits: list[str]) -> DictConfig:
        return load("collect", self.overrides("collect") + overrides + [f"collect.splits={override_value(splits)}"])

    def collect_other_spaces(self, data: Path) -> None:
        """Collect other_spaces() into <workspace>/<that space>/data; transfers then also score on the
        held-out ones. A held-out space must be neither the test space nor a transfer space of `data`."""
        from tst.collect.run import run

        used = read_manifest(data)["outputs"]["spaces"]  # the test space and the transfer spaces
        held_out = []
        for name, (overrides, splits) in self.other_spaces().items():
            if "eval" in splits and name in used:
                raise TSTError(f"experiment.held_out: {name} is a transfer space of {data} ({', '.join(used)}); "
                               "expected a space neither pretrained nor trained on")
            cfg = self.other_space_config(overrides, splits)
            folder = Path(str(cfg.workspace_dir)) / name / "data"
            title = f"collect {' and '.join('held-out' if s == 'eval' else 'external' for s in splits)} {name}"
            self.execute(title, folder, lambda c=cfg: run(c),
                         lambda d, c=cfg: _finished(d) and _same_dataset(read_manifest(d)["config"], c))
            if "eval" in splits:
                held_out.append(folder)
        self.held_out_data = held_out

    def tokenizers(self) -> Path:
        from tst.pretrain.tokenizer_training import train_tokenizers

        cfg = load("pretrain", self.overrides("pretrain") + ["pretrain.objective=fourm"])
        config = OmegaConf.to_container(cfg, resolve=True)
        return self.execute("tokenizers", self.root / "pretrain" / "tokenizers", lambda: train_tokenizers(cfg),
                            lambda out: _finished(out) and _same_training(read_manifest(out)["config"], config))

    def pretrain(self, objective: str, data: Path, tokenizers: Path | None, seed: int | None) -> Path:
        """One pretraining run; seed None keeps the preset's pretrain.seed (one run shared by every
        transfer seed), an int gives this seed its own pretraining (experiment.seed_pretraining)."""
        from tst.pretrain.run import run

        overrides = self.overrides("pretrain") + ([] if seed is None else [f"pretrain.seed={seed}"])
        external = load("pretrain", overrides + self.pretraining_overrides(objective)).pretrain.get("external") or []
        # An external dataset collected again (another fingerprint) pretrains again.
        inputs = [fingerprint(data)] + ([fingerprint(tokenizers)] if tokenizers else []) + \
            [fingerprint(Path(str(self.cfg.workspace_dir)) / str(folder)) for folder in external]
        run_dir = self.pretraining_dir(objective, overrides, inputs, seed)
        overrides = overrides + self.pretraining_overrides(objective)
        cfg = load("pretrain", overrides + [f"run_name={run_dir.name}"])
        # A killed run resumes from its newest complete checkpoint, if any.
        return self.execute(f"pretrain {objective}" + ("" if seed is None else f" seed {seed}"), run_dir,
                            lambda: run(cfg, overrides),
                            resume=lambda: run(load("pretrain", overrides + [f"resume={run_dir}"]), overrides),
                            wanted=(cfg, ("pretrain", "model")))

    def pretraining_dir(self, objective: str, overrides: list[str], inputs: list[str], seed: int | None) -> Path:
        """The run folder of one pretraining: named after the objective (or variant) and a hash of the
        shared overrides, the inputs' fingerprints and, for a variant, its own overrides (so editing a
        variant pretrains it again; plain objectives keep the names they always had)."""
        parts = [overrides, inputs] + ([self.variants[objective]] if objective in self.variants else [])
        return self.root / "pretrain" / f"{objective}-{'' if seed is None else f's{seed}-'}{_name_hash(*parts)}"

    def pretraining_overrides(self, name: str) -> list[str]:
        """The overrides that make experiment.objectives' `name` (an objective or a variant)."""
        return self.variants.get(name, [f"pretrain.objective={name}"])

    def backbone_overrides(self, backbone: str, spec: str, seed: int, data: Path,
                           fraction: float | None = None) -> tuple[list[str], str]:
        """(the transfer overrides that pick the backbone, seed and fraction; the hash naming the run folder)."""
        source = fingerprint(Path(spec)) if Path(spec).is_dir() else spec
        extra = [f"transfer.backbone={spec}", f"transfer.seed={seed}"] + \
            ([] if fraction is None else [f"transfer.fraction={fraction}"])
        if backbone in self.variants:  # a row of its own in the results table
            extra.append(f"transfer.backbone_name={backbone}")
        if self.held_out_data:  # also scored on the held-out spaces
            extra.append(f"transfer.held_out={override_value([str(folder) for folder in self.held_out_data])}")
        return extra, _name_hash(self.overrides("transfer"), extra[1:], source, fingerprint(data))

    def transfer(self, backbone: str, spec: str, seed: int, fraction: float, data: Path) -> Path:
        from tst.transfer.run import run

        extra, digest = self.backbone_overrides(backbone, spec, seed, data, fraction)
        name = f"{backbone}-s{seed}-f{fraction:g}-{digest}"
        cfg = load("transfer", self.overrides("transfer") + extra + [f"run_name={name}"])
        return self.execute(f"transfer {backbone} seed {seed} fraction {fraction:g}", self.root / "transfer" / name,
                            lambda: run(cfg), wanted=(cfg, RESULT_SECTIONS))

    def probe(self, backbone: str, spec: str, seed: int, data: Path) -> Path:
        """The frozen-feature probe of one backbone (`tst transfer probe`): seconds, no SGD."""
        from tst.transfer.probe import probe

        extra, digest = self.backbone_overrides(backbone, spec, seed, data)
        name = f"{backbone}-s{seed}-{digest}"
        cfg = load("transfer", self.overrides("transfer") + extra + [f"run_name={name}"])
        return self.execute(f"probe {backbone} seed {seed}", self.root / "probe" / name,
                            lambda: probe(cfg), wanted=(cfg, RESULT_SECTIONS))

    def deploy(self, model: Path) -> Path:
        from tst.deploy.run import deploy

        # The model's fingerprint: a transfer made again under its old name deploys again.
        name = f"{self.e.deploy_task}-{model.name}-{_name_hash(self.overrides('deploy'), fingerprint(model))}"
        return self.execute("deploy", self.root / "deploy" / name, lambda: deploy(
            load("deploy", self.overrides("deploy") + [f"deploy.model={model}", f"run_name={name}"])))

    def report(self) -> Path:
        from tst.transfer.report import report

        rows = f"report.rows={override_value([str(name) for name in self.e.backbones])}"  # variants in the preset's order
        return report(load("report", self.shared + [rows] + [str(o) for o in self.e.get("report", [])]))

    # --- the whole thing --------------------------------------------------------------------------
    def run(self) -> Path:
        e = self.e
        data = self.collect()
        self.collect_other_spaces(data)
        tokenizers = self.tokenizers() if "fourm" in e.objectives else None
        pretrain_seeds = [int(seed) for seed in e.seeds] if e.get("seed_pretraining") else [None]
        backbones = {(objective, seed): str(self.pretrain(objective, data, tokenizers, seed))
                     for objective in e.objectives for seed in pretrain_seeds}
        transferred: dict[str, Path] = {}
        for name in e.backbones:
            for seed in e.seeds:
                spec = backbones.get((name, int(seed) if e.get("seed_pretraining") else None), name)
                for fraction in e.fractions:
                    transferred.setdefault(name, self.transfer(name, spec, int(seed), float(fraction), data))
                if e.get("probe"):
                    self.probe(name, spec, int(seed), data)
        if e.deploy_backbone:  # checked against experiment.backbones before anything ran
            self.deploy(transferred[e.deploy_backbone])
        out = self.execute("report", self.root / "report", self.report, reusable=lambda _: False)  # always redrawn
        console.print(f"stage seconds: {json.dumps(self.timings)}")
        return out


def _changed_settings(run_dir: Path, wanted: DictConfig, sections: tuple[str, ...]) -> list[str]:
    """'key: stored -> wanted' for every setting under `sections` where the finished run in `run_dir` (the
    resolved config its manifest holds) differs from `wanted`. Run folders are named after a hash of the
    preset's overrides, so a changed default (transfer.layer_decay 1.0 -> 0.75) keeps the name: this is
    what notices it."""
    stored_config, wanted_config = read_manifest(run_dir)["config"], OmegaConf.to_container(wanted, resolve=True)
    stored = _flattened({k: stored_config.get(k) for k in sections})
    now = _flattened({k: wanted_config.get(k) for k in sections})
    return [f"{key}: {stored.get(key)!r} -> {now.get(key)!r}" for key in sorted(stored.keys() | now.keys())
            if stored.get(key) != now.get(key)]


def _flattened(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}: nested config sections as dotted keys."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat |= _flattened(value, f"{prefix}{key}.")
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same_dataset(stored: dict, wanted: DictConfig) -> bool:
    """A finished dataset holds what `wanted` would render: the same content identity (space and content
    keys, not runtime ones such as workers) and every split it asks for."""
    from tst.collect.run import dataset_identity

    return dataset_identity(OmegaConf.create(stored)) == dataset_identity(wanted) and \
        set(wanted.collect.splits) <= set(stored["collect"]["splits"])


def _same_training(stored: dict, wanted: dict) -> bool:
    """Tokenizers depend on the data, model patch and tokenizer settings, not on the objective's keys."""
    keys = ("data", "model", "space", "workspace_dir")
    return all(stored.get(k) == wanted.get(k) for k in keys) and \
        stored["pretrain"]["tokenizer"] == wanted["pretrain"]["tokenizer"]


def run(cfg: DictConfig) -> Path:
    return Pipeline(cfg).run()


def check_presets(cfg: DictConfig) -> None:
    """`tst run`: compose (and so check) every stage's config from the experiment preset's override lists,
    as the pipeline will, so a bad value in a later stage stops the run before the first stage writes."""
    pipeline = Pipeline(cfg)
    for stage in ("collect", "pretrain", "transfer", "deploy", "report"):
        try:
            load(stage, pipeline.overrides(stage))
        except TSTError as error:
            raise TSTError(f"experiment.{stage}: {error}") from None
    collected = [f"{name}/data" for name, (_, splits) in pipeline.other_spaces().items() if "pretrain" in splits]
    for name in cfg.experiment.objectives:
        if name in pipeline.variants:
            try:
                variant = load("pretrain", pipeline.overrides("pretrain") + pipeline.pretraining_overrides(name))
            except TSTError as error:
                raise TSTError(f"experiment.variants.{name}: {error}") from None
            for entry in variant.pretrain.get("external") or []:
                if not Path(str(entry)).is_absolute() and str(entry) not in collected:
                    raise TSTError(f"experiment.variants.{name}: pretrain.external names {entry}, which this "
                                   f"experiment does not collect (experiment.external collects: "
                                   f"{', '.join(collected) or 'nothing'})")
