"""`tst pretrain`, `tst pretrain tokenizers`, `tst pretrain predict`."""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from safetensors.torch import save_file

from tst.determinism import deterministic_kernels
from tst.errors import TSTError
from tst.progress import StepProgressBar
from tst.tracking import tracking_uri
from tst.weights import load_safetensors, read_torch_file
from tst.workspace import (artifact_dir, atomic_write_json, fingerprint, new_run_name, read_json,
                           read_manifest, write_manifest)

from tst.collect.dataset import FrameDataset, RandomResizedCropFlip, collate, collected_dataset
from tst.pretrain.data import PretrainData
from tst.pretrain.module import PretrainModule
from tst.pretrain.objectives import check_modalities
from tst.pretrain.teacher import teacher_features
from tst.pretrain.tokenizer import Tokenizer, TokenizerConfig
from tst.pretrain.tokenizer_quality import check_quality
from tst.pretrain.tokens import load_tokens
from tst.pretrain.visualize import prediction_sheet

console = Console(stderr=True)
RUN_DIR_VARIABLE = "TST_PRETRAIN_RUN_DIR"  # tells DDP worker processes which run they belong to
# Keys a resumed run must share with the run it continues.
STRUCTURAL = ("model", "pretrain.objective", "pretrain.modalities", "pretrain.teacher", "pretrain.teacher_size",
              "pretrain.input_budget", "pretrain.target_budget", "pretrain.mixture", "pretrain.mae_mask_ratio",
              "pretrain.rgb_patch_norm", "pretrain.seed", "data_dir", "data.batch_size", "data.crop_scale",
              "pretrain.external", "pretrain.test_space_share", "pretrain.frames")


def _space_name(cfg: DictConfig) -> str:
    from tst.envs.registry import space_name

    return space_name(cfg.space)


def dataset_dir(cfg: DictConfig) -> Path:
    """The collected dataset (`collected_dataset`), refused when it lacks a modality pretraining reads."""
    root = collected_dataset(cfg)
    manifest = read_manifest(root)
    missing = [m for m in _modalities(cfg) if m not in manifest["outputs"]["modalities"]]
    if missing:
        raise TSTError(f"{root}: the dataset lacks {missing}; it holds {manifest['outputs']['modalities']}")
    return root


def external_datasets(cfg: DictConfig, test_space: Path) -> list[Path]:
    """pretrain.external's folders (a relative one from workspace_dir), each a collected dataset of another
    space, or the agent's observations of this one (online TST writes them: manifest outputs.origin
    "agent"), with a pretrain split and the modalities pretraining reads; one-line errors otherwise."""
    own = read_manifest(test_space)["outputs"].get("space")
    folders = []
    for index, entry in enumerate(cfg.pretrain.get("external") or []):
        folder = Path(str(entry)) if Path(str(entry)).is_absolute() else Path(str(cfg.workspace_dir)) / str(entry)
        key = f"pretrain.external[{index}]"
        if not (folder / "manifest.json").is_file():
            raise TSTError(f"{key}: {folder} is not a collected dataset (no manifest.json); collect that space first")
        outputs = read_manifest(folder)["outputs"]
        if outputs.get("space") == own and outputs.get("origin") != "agent":
            raise TSTError(f"{key}: {folder} is the test space {own}; expected another space's dataset or the "
                           "agent's observations of this one")
        if "pretrain" not in outputs.get("splits", {}):
            raise TSTError(f"{key}: {folder} has no pretrain split (it holds {', '.join(outputs.get('splits', {}))})")
        missing = [m for m in _modalities(cfg) if m not in outputs.get("modalities", [])]
        if missing:
            raise TSTError(f"{key}: {folder} lacks {missing}; it holds {outputs.get('modalities')}")
        folders.append(folder)
    return folders


def _modalities(cfg: DictConfig) -> list[str]:
    return check_modalities(cfg.pretrain.objective, list(cfg.pretrain.modalities), cfg.pretrain.label_ablation)


def _tokenizer_dir(cfg: DictConfig) -> Path:
    if cfg.pretrain.get("tokenizers"):
        return Path(str(cfg.pretrain.tokenizers))
    return artifact_dir(cfg.workspace_dir, _space_name(cfg), "pretrain", "tokenizers")


def load_tokenizers(directory: Path, data: Path, modalities: list[str], patch: int) -> dict[str, Tokenizer]:
    """Tokenizers trained by `tst pretrain tokenizers` on this dataset, at this patch size."""
    manifest = read_manifest(directory)
    outputs = manifest["outputs"]
    if outputs["dataset_fingerprint"] != fingerprint(data):
        raise TSTError(f"{directory}: tokenizers were trained on another dataset ({outputs['dataset']}); "
                       f"train them on {data} with tst pretrain tokenizers")
    if outputs["patch"] != patch:
        raise TSTError(f"{directory}: tokenizers use patch {outputs['patch']}, the model patch {patch}")
    tokenizers = {}
    for name in modalities:
        if name not in outputs["modalities"]:
            raise TSTError(f"{directory}: no tokenizer for '{name}'; it has {list(outputs['modalities'])}")
        tokenizer = Tokenizer(name, TokenizerConfig(tuple(outputs["levels"]), patch, outputs["hidden"]))
        tokenizer.load_state_dict(load_safetensors(directory / f"{name}.safetensors",
                                                   f"the '{name}' tokenizer weights written by tst pretrain tokenizers"))
        tokenizers[name] = tokenizer.eval()
    return tokenizers


def _eval_batch(data: Path, modalities: list[str], size: int, count: int, skip_corrupt: bool = False) -> dict:
    """The first `count` eval frames, centre-cropped square and resized to the model's size."""
    frames = FrameDataset(data, "eval", modalities, transform=RandomResizedCropFlip(size, (1.0, 1.0), (1.0, 1.0), 0.0),
                          skip_corrupt=skip_corrupt)
    if len(frames) == 0:
        raise TSTError(f"{data}: the eval split is empty")
    return collate([frames[i] for i in range(min(count, len(frames)))])


class PredictionImages(Callback):
    """Every `every` steps and at the end: a PNG of held-out eval predictions, saved and sent to MLflow."""

    def __init__(self, batch: dict, directory: Path, every: int):
        self.batch, self.directory, self.every = batch, directory, every

    def _save(self, trainer: L.Trainer, module: PretrainModule) -> None:
        if trainer.global_rank != 0:
            return
        module.eval()
        batch = {k: v.to(module.device) if isinstance(v, torch.Tensor) else v for k, v in self.batch.items()}
        image = prediction_sheet(module, batch, module.selection(len(batch["key"]), step=0))
        module.train()
        path = self.directory / f"step-{trainer.global_step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        for logger in trainer.loggers:
            if isinstance(logger, L.pytorch.loggers.MLFlowLogger):
                logger.experiment.log_artifact(logger.run_id, str(path), "predictions")

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_index):
        if trainer.global_step % self.every == 0:
            self._save(trainer, module)

    def on_train_end(self, trainer, module):
        self._save(trainer, module)


def _differences(a: dict, b: dict, keys: tuple[str, ...]) -> list[str]:
    def pick(config: dict, key: str):
        for part in key.split("."):
            config = config.get(part) if isinstance(config, dict) else None
        return config
    return [k for k in keys if pick(a, k) != pick(b, k)]


def _run_config(cfg: DictConfig, overrides: list[str]) -> tuple[dict, Path, str | None]:
    """(config dict, run directory, checkpoint to resume from). On resume the stored config is used;
    structural keys the command line overrides must equal the stored ones."""
    config = OmegaConf.to_container(cfg, resolve=True)
    if not cfg.get("resume"):
        if RUN_DIR_VARIABLE in os.environ:  # a DDP worker started by the primary process: same run
            return config, Path(os.environ[RUN_DIR_VARIABLE]), None
        adapted = cfg.pretrain.get("init") and not Path(str(cfg.pretrain.init)).is_dir()
        name = cfg.run_name or f"{'adapted' if adapted else cfg.pretrain.objective}-{new_run_name()}"
        run_dir = artifact_dir(cfg.workspace_dir, _space_name(cfg), "pretrain", name)
        if run_dir.exists():
            raise TSTError(f"{run_dir}: already exists; resume it with resume={run_dir} or choose another run_name")
        return config, run_dir, None
    run_dir = Path(str(cfg.resume))
    stored_path = run_dir / "config.json"
    if not stored_path.is_file():
        raise TSTError(f"resume: {run_dir} is not a pretraining run (no config.json)")
    stored = read_pretrain_config(run_dir)
    explicit = {o.split("=", 1)[0].lstrip("+~") for o in overrides}
    differ = [k for k in _differences(stored, config, STRUCTURAL) if any(k == e or k.startswith(e + ".") or
                                                                          e.startswith(k + ".") for e in explicit)]
    if differ:
        raise TSTError(f"resume: this config differs from {run_dir} in {', '.join(differ)}; those must match")
    stored["pretrain"]["steps"] = config["pretrain"]["steps"] if "pretrain.steps" in explicit else stored["pretrain"]["steps"]
    checkpoint = newest_checkpoint(run_dir)
    if checkpoint is None:
        for cut in (run_dir / "checkpoints").glob("*.ckpt"):  # cut short by the kill: nothing to resume from
            cut.unlink()
        console.print(f"resume: {run_dir} was stopped before its first complete checkpoint; starting it over")
        return stored, run_dir, None
    return stored, run_dir, str(checkpoint)


def read_pretrain_config(run_dir: Path) -> dict:
    """<run_dir>/config.json, refused in one line unless it holds the keys every reader uses."""
    return read_json(Path(run_dir) / "config.json", "the config of a tst pretrain run",
                     ("model.patch", "pretrain.objective", "pretrain.steps"))


def newest_checkpoint(run_dir: Path) -> Path | None:
    """The most recently written complete checkpoint in <run_dir>/checkpoints, or None.

    Lightning writes step-N.ckpt, then last.ckpt, each in place, so a kill can leave last.ckpt one
    checkpoint behind step-N.ckpt, or either file cut short. A complete one is a readable zip archive
    (torch.save's format, whose index sits at the end of the file)."""
    candidates = sorted((run_dir / "checkpoints").glob("*.ckpt"), key=lambda path: (path.stat().st_mtime_ns, path.name),
                        reverse=True)
    return next((path for path in candidates if zipfile.is_zipfile(path)), None)


def continued_run(run_dir: Path, config: dict) -> Path:
    """`pretrain.init=<a finished tst pretrain run>`: this run continues that run's weights, so it takes
    that run's model config (set into `config`); the objective, modalities and teacher must be the same. Returns
    the run folder."""
    stored = read_pretrain_config(run_dir)
    if not (run_dir / "model.safetensors").is_file():
        raise TSTError(f"pretrain.init: {run_dir} has no model.safetensors; expected a finished tst pretrain run")
    for key in ("objective", "modalities", "teacher"):
        if stored["pretrain"].get(key) != config["pretrain"].get(key):
            raise TSTError(f"pretrain.init: {run_dir} was pretrained with pretrain.{key}={stored['pretrain'].get(key)}; "
                           f"this run has {config['pretrain'].get(key)} (they must match to continue it)")
    config["model"] = stored["model"]
    return run_dir


def _trainer(config: dict, run_dir: Path, callbacks: list, loggers: list, max_steps: int) -> L.Trainer:
    t = config["trainer"]
    p = config["pretrain"]
    return L.Trainer(accelerator=t["accelerator"], devices=t["devices"], num_nodes=t["num_nodes"],
                     strategy=t["strategy"], precision=t["precision"], max_steps=max_steps,
                     deterministic=deterministic_kernels(t.get("deterministic", True)),
                     gradient_clip_val=float(p["grad_clip"]), log_every_n_steps=int(p["log_every"]),
                     callbacks=[*callbacks, StepProgressBar("pretrain")], logger=loggers or False,
                     default_root_dir=str(run_dir),
                     enable_model_summary=False, use_distributed_sampler=False,
                     enable_progress_bar=True, num_sanity_val_steps=0)


def build_module(config: dict, data: Path) -> PretrainModule:
    modalities = check_modalities(config["pretrain"]["objective"], config["pretrain"]["modalities"],
                                  config["pretrain"]["label_ablation"])
    num_classes = len(read_manifest(data)["outputs"]["taxonomy"]["classes"])
    tokenizers = None
    if config["pretrain"]["objective"] == "fourm":
        tokenizers = load_tokenizers(_tokenizer_dir(OmegaConf.create(config)), data, modalities,
                                     config["model"]["patch"])
    return PretrainModule(config, modalities, num_classes, tokenizers)


def run(cfg: DictConfig, overrides: list[str] = ()) -> Path:
    """Pretrain on the test space's pretrain split; returns the run directory. `overrides`: the
    command-line overrides (checked against the stored config on resume)."""
    config, run_dir, checkpoint = _run_config(cfg, list(overrides))
    data = dataset_dir(OmegaConf.create(config))
    if config["pretrain"]["objective"] == "fourm" and not config["pretrain"].get("allow_weak_tokenizers"):
        directory = _tokenizer_dir(OmegaConf.create(config))
        if (directory / "manifest.json").is_file():
            check_quality(read_manifest(directory)["outputs"].get("quality"),
                          float(config["pretrain"]["min_code_share"]), str(directory))
    published, continued = None, None
    init = config["pretrain"].get("init")
    if init and checkpoint is None and Path(str(init)).is_dir():  # continue another run: its architecture
        continued = continued_run(Path(str(init)), config)
    elif init and checkpoint is None:  # adapted TST: the architecture comes from the file
        from tst.pretrain.adapted import adapted_model_config, read_published

        published, source = read_published(str(init))
        config["model"] = adapted_model_config(published, int(config["model"]["image_size"]))
    L.seed_everything(int(config["pretrain"]["seed"]), workers=True, verbose=False)  # before any weight exists
    module = build_module(config, data)
    if continued is not None:
        weights = continued / "model.safetensors"
        load_checked(module.model, load_safetensors(weights, "the weights of a finished tst pretrain run"),
                     weights, config["model"])
        console.print(f"pretrain.init={continued}: continuing its weights")
    if published is not None:
        from tst.pretrain.adapted import load_adapted

        adapted = load_adapted(module.model, published)
        fresh = sorted({".".join(k.split(".")[:2]) for k in adapted["fresh"]})
        console.print(f"pretrain.init={config['pretrain']['init']}: {adapted['mapped']} tensors from {source}; "
                      f"fresh: {', '.join(fresh) or 'none'}; {adapted['dropped']} published tensors have no place")
    p, d = config["pretrain"], config["data"]
    codes = None
    if p["objective"] == "fourm" and p.get("precomputed_tokens"):
        codes = load_tokens(_tokenizer_dir(OmegaConf.create(config)), data, config["model"]["image_size"])
    external = external_datasets(OmegaConf.create(config), data)
    teacher = None
    if p.get("teacher"):
        size = int(p.get("teacher_size", 256))
        console.print(f"pretrain.teacher={p['teacher']}: reading every pretraining frame at {size} px")
        teacher = (p["teacher"], lambda frames: teacher_features(p["teacher"], frames, size),
                   int(config["model"]["image_size"]) // int(config["model"]["patch"]))
    datamodule = PretrainData(data, module.modalities, config["model"]["image_size"], int(d["batch_size"]),
                              int(d["num_workers"]), tuple(d["crop_scale"]), int(p["seed"]), bool(d["skip_corrupt"]),
                              codes, bool(d.get("cache_frames", False)), tuple(p.get("splits", ["pretrain"])),
                              tuple(external), float(p.get("test_space_share", 1.0)), p.get("frames"), teacher)
    eval_batch = _eval_batch(data, module.modalities, config["model"]["image_size"], 4,
                             bool(d["skip_corrupt"]))  # read before the run folder is made
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        return _train(config, run_dir, module, datamodule, eval_batch, checkpoint, data)
    except BaseException:
        if created and not any((run_dir / "checkpoints").glob("*.ckpt")):
            shutil.rmtree(run_dir, ignore_errors=True)  # failed before its first checkpoint: nothing to resume
        raise


def _train(config: dict, run_dir: Path, module: PretrainModule, datamodule: PretrainData, eval_batch: dict,
           checkpoint: str | None, data: Path) -> Path:
    p = config["pretrain"]
    atomic_write_json(run_dir / "config.json", config)
    os.environ[RUN_DIR_VARIABLE] = str(run_dir)  # inherited by the worker processes Lightning starts
    callbacks = [ModelCheckpoint(dirpath=run_dir / "checkpoints", every_n_train_steps=int(p["checkpoint_every"]),
                                 save_last=True, save_top_k=-1, filename="step-{step:06d}",
                                 auto_insert_metric_name=False),
                 PredictionImages(eval_batch, run_dir / "images", int(p["image_every"]))]
    loggers = []
    if config["tracking"]["enabled"]:
        Path(config["workspace_dir"]).mkdir(parents=True, exist_ok=True)
        loggers.append(L.pytorch.loggers.MLFlowLogger(experiment_name=config["tracking"]["experiment"],
                                                      tracking_uri=tracking_uri(OmegaConf.create(config)),
                                                      run_name=f"pretrain/{p['objective']}/{run_dir.name}",
                                                      tags={"stage": "pretrain", "objective": p["objective"],
                                                            "label_ablation": str(p["label_ablation"])}))
        loggers[0].log_hyperparams({k: v for k, v in _flat(config).items()})
    trainer = _trainer(config, run_dir, callbacks, loggers, int(p["steps"]))
    try:
        if checkpoint:  # refused in one line before Lightning reads it, if it is not weights-only
            read_torch_file(checkpoint)
        trainer.fit(module, datamodule=datamodule, ckpt_path=checkpoint, weights_only=True)
    finally:
        os.environ.pop(RUN_DIR_VARIABLE, None)
    if trainer.global_rank == 0:
        _export(module, run_dir, config, data)
        console.print(f"[green]pretrained[/green] {run_dir}")
    return run_dir


def _flat(data, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        out = {}
        for key, value in data.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): str(data)[:500]}


def _export(module: PretrainModule, run_dir: Path, config: dict, data: Path) -> None:
    """model.safetensors (everything), encoder.safetensors (the backbone for transfer), manifest."""
    state = {k: v.contiguous() for k, v in module.model.state_dict().items()}
    save_file(state, str(run_dir / "model.safetensors"))
    encoder = {k: v for k, v in state.items() if not k.startswith(("decoder", "output_adapters", "mask_token"))}
    save_file(encoder, str(run_dir / "encoder.safetensors"))
    inputs = {"dataset": data} | {f"external/{read_manifest(folder)['outputs']['space']}": folder
                                  for folder in external_datasets(OmegaConf.create(config), data)}
    if config["pretrain"]["objective"] == "fourm":
        inputs["tokenizers"] = _tokenizer_dir(OmegaConf.create(config))
    write_manifest(run_dir, "pretrain", config, inputs,
                   {"model": "model.safetensors", "encoder": "encoder.safetensors", "config": "config.json",
                    "checkpoints": "checkpoints/", "modalities": module.modalities,
                    "objective": config["pretrain"]["objective"], "label_ablation": config["pretrain"]["label_ablation"]})


def load_run(run_dir: Path) -> tuple[PretrainModule, dict, Path]:
    """A finished (or checkpointed) pretraining run as an eval-mode module, its config and dataset."""
    run_dir = Path(run_dir)
    if run_dir.is_file():  # a checkpoint inside <run>/checkpoints/
        run_dir = run_dir.parent.parent
    config_path = run_dir / "config.json"
    if not config_path.is_file():
        raise TSTError(f"ckpt: {run_dir} is not a pretraining run (no config.json)")
    config = read_pretrain_config(run_dir)
    weights = run_dir / "model.safetensors"
    checkpoint = newest_checkpoint(run_dir)
    if not weights.is_file() and checkpoint is None:
        raise TSTError(f"{run_dir}: no weights (neither model.safetensors nor a complete checkpoint in "
                       "checkpoints/); expected a finished or checkpointed tst pretrain run")
    data = dataset_dir(OmegaConf.create(config))
    module = build_module(config, data)
    if weights.is_file():
        load_checked(module.model, load_safetensors(weights, "the weights of a finished tst pretrain run"),
                     weights, config["model"])
    else:
        state = read_torch_file(checkpoint)["state_dict"]
        load_checked(module, state, checkpoint, config["model"])
    return module.eval(), config, data


def load_checked(module: torch.nn.Module, state: dict, source: Path, model_config: dict) -> None:
    """Strict load; a tensor of another shape (a checkpoint of another model size) is a one-line error
    naming the tensor and both shapes."""
    expected = module.state_dict()
    for key, value in state.items():
        if key in expected and expected[key].shape != value.shape:
            raise TSTError(f"{source}: tensor '{key}' has shape {tuple(value.shape)} but the run's model config "
                           f"({model_config}) expects {tuple(expected[key].shape)}; is it a checkpoint of another "
                           "model size?")
    missing, unexpected = module.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise TSTError(f"{source}: checkpoint does not match the model (missing {missing[:3]}, "
                       f"unexpected {unexpected[:3]})")
