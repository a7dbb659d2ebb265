"""MLflow tracking: a sqlite store inside the workspace, telemetry off."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("DO_NOT_TRACK", "true")


def tracking_uri(cfg: DictConfig) -> str:
    """cfg.tracking.uri, or sqlite:///<workspace_dir>/mlflow.db."""
    if cfg.tracking.get("uri"):
        return str(cfg.tracking.uri)
    return f"sqlite:///{Path(cfg.workspace_dir).resolve() / 'mlflow.db'}"


def _flatten(data: Any, prefix: str = "") -> dict[str, str]:
    if isinstance(data, dict):
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(_flatten(value, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): str(data)[:500]}


def _experiment_id(mlflow: Any, cfg: DictConfig) -> str:
    """The experiment named cfg.tracking.experiment, created with its artifacts in the workspace."""
    name = cfg.tracking.experiment
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (Path(cfg.workspace_dir).resolve() / "mlartifacts").as_uri()
    return mlflow.create_experiment(name, artifact_location=location)


def record_run(cfg: DictConfig, stage: str, space: str, artifact_dir: Path, inputs: dict[str, str],
               outputs: dict[str, Any], metrics: dict[str, float] | None = None,
               images: list[Path] = (), tags: dict[str, str] | None = None) -> str | None:
    """Record one finished command: resolved config as params, inputs/outputs, metrics, PNGs, and
    extra `tags` (e.g. the backbone and task of a transfer run, which `tst report` groups by).

    Returns the MLflow run id (None when cfg.tracking.enabled is false).
    """
    if not cfg.tracking.enabled:
        return None
    import mlflow  # imported late: it takes seconds and only tracked commands need it

    for logger in ("mlflow", "alembic"):  # their INFO lines about creating tables are noise here
        logging.getLogger(logger).setLevel(logging.WARNING)

    Path(cfg.workspace_dir).mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri(cfg))
    config = OmegaConf.to_container(cfg, resolve=True)
    with mlflow.start_run(experiment_id=_experiment_id(mlflow, cfg), run_name=f"{stage}/{space}") as run:
        params = _flatten(config)
        for start in range(0, len(params), 100):  # MLflow caps one batch at 100 params
            mlflow.log_params(dict(list(params.items())[start:start + 100]))
        mlflow.set_tags({"stage": stage, "space": space, "artifact_dir": str(artifact_dir)} | dict(tags or {}))
        mlflow.log_dict(config, "config.json")
        mlflow.log_dict({"inputs": inputs, "outputs": outputs}, "io.json")
        if metrics:
            mlflow.log_metrics(metrics)
        for image in images:
            mlflow.log_artifact(str(image), "images")
        return run.info.run_id
