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


# Keys of transfer configs stored before the detection and captioning keys were nested: new -> old name.
FLAT_KEYS = {"det": {"score_threshold": "det_score_threshold", "iou_threshold": "det_iou_threshold"},
             "caption": {"width": "caption_width", "beam": "beam", "max_words": "max_caption_words",
                         "min_count": "caption_min_count", "meteor": "meteor"}}


def nested_settings(settings: dict) -> dict:
    """A stored transfer config with `det` and `caption` nested as they are now, so runs made before
    (flat det_*/caption keys; caption width 128 before it was a key) still load."""
    settings = dict(settings)
    for group, keys in FLAT_KEYS.items():
        if group not in settings:
            settings[group] = {new: settings.pop(old) for new, old in keys.items() if old in settings}
    settings["caption"].setdefault("width", 128)
    return settings


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
    settings = nested_settings(config["transfer"])
    taxonomy = Taxonomy.from_dict(saved["taxonomy"])
    vocabulary = None
    if "caption" in saved["tasks"]:
        from tst.transfer.captioning import Vocabulary

        vocabulary = Vocabulary.from_dict(saved["tasks"]["caption"]["vocabulary"])
    backbone, info, size = make_backbone(str(settings["backbone"]), config["model"], settings)
    module = TransferModule(backbone, build_tasks(list(saved["tasks"]), taxonomy, settings, vocabulary), settings)
    state = read_torch_file(run_dir / "model.pt")
    try:
        missing_keys, unexpected = module.load_state_dict(state, strict=False)
    except RuntimeError as error:  # a tensor of another shape (a head built with other settings)
        detail = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise TSTError(f"{run_dir / 'model.pt'}: does not match the run's model ({detail})") from None
    if missing_keys or unexpected:
        raise TSTError(f"{run_dir / 'model.pt'}: does not match the run's model (missing {missing_keys[:3]}, "
                       f"unexpected {unexpected[:3]})")
    return TransferredModel(module.eval(), taxonomy, saved["image_size"], info, run_dir)
