"""Loading a finished `tst transfer` run back as a model: backbone, heads, tasks, taxonomy."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from tst.errors import TSTError
from tst.weights import read_torch_file
from tst.taxonomy import Taxonomy
from tst.workspace import read_json, read_manifest

from tst.transfer.backbones import BackboneInfo, make_backbone
from tst.transfer.module import TransferModule


@dataclass
class TransferredModel:
    """module: eval-mode TransferModule (one backbone, a head per task); image_size: its input pixels."""

    module: TransferModule
    taxonomy: Taxonomy
    image_size: int
    backbone: BackboneInfo
    run_dir: Path


def load_transfer(run_dir: str | Path, required_tasks: tuple[str, ...] = ()) -> TransferredModel:
    """The transfer run at `run_dir`; a one-line error when it is not one or lacks a required task head."""
    from tst.transfer.run import build_tasks

    run_dir = Path(run_dir)
    manifest = read_manifest(run_dir)
    if manifest.get("stage") != "transfer" or not (run_dir / "tasks.json").is_file():
        raise TSTError(f"{run_dir}: not a finished tst transfer run (no tasks.json)")
    saved = read_json(run_dir / "tasks.json", "the heads of a tst transfer run", ("tasks", "taxonomy", "image_size"))
    missing = [t for t in required_tasks if t not in saved["tasks"]]
    if missing:
        raise TSTError(f"{run_dir}: the checkpoint has no {', '.join(missing)} head (it holds "
                       f"{', '.join(saved['tasks'])}); transfer with transfer.task=[seg,det,caption]")
    config = manifest["config"]
    settings = config["transfer"]
    taxonomy = Taxonomy.from_dict(saved["taxonomy"])
    vocabulary = None
    if "caption" in saved["tasks"]:
        from tst.transfer.captioning import Vocabulary

        vocabulary = Vocabulary.from_dict(saved["tasks"]["caption"]["vocabulary"])
    backbone, info, size = make_backbone(str(settings["backbone"]), config["model"], settings)
    module = TransferModule(backbone, build_tasks(list(saved["tasks"]), taxonomy, settings, vocabulary), settings)
    state = read_torch_file(run_dir / "model.pt")
    missing_keys, unexpected = module.load_state_dict(state, strict=False)
    if missing_keys or unexpected:
        raise TSTError(f"{run_dir / 'model.pt'}: does not match the run's model (missing {missing_keys[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return TransferredModel(module.eval(), taxonomy, saved["image_size"], info, run_dir)
