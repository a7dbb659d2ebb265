"""Settings checked at compose time: each key's type, range or allowed values, and the relations between
keys, so a bad value is refused in one line, before any stage writes a thing.

Rules are declared per key (`RULES`, dotted paths; a rule applies wherever its key exists, whatever the
stage) and per stage for a stage's own top-level keys (`STAGE_RULES`). Upper bounds keep sizes and counts
within what one machine can hold: a frame side above `MAX_PIXELS` would need tens of GiB per frame buffer,
a split above `MAX_FRAMES` would take days to plan and render.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from omegaconf import DictConfig, OmegaConf

from tst.errors import TSTError

MAX_PIXELS = 2048        # pixels per side of a rendered or model frame
MAX_FRAMES = 1_000_000   # frames per split
MAX_STEPS = 1_000_000_000  # optimizer or agent steps
MAX_WORKERS = 1024       # processes


@dataclass(frozen=True)
class Rule:
    """What a key accepts: `expected`, in words for the error message, and `accepts(value) -> bool`.
    each: the value is a list and every element must pass (errors name the element, `key[i]`)."""

    expected: str
    accepts: Callable[[object], bool]
    each: bool = False
    nonempty: bool = False


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def integer(low: int = 1, high: int | None = None, unit: str = "") -> Rule:
    """An integer in low..high (no upper bound when high is None); `unit` explains the bound."""
    words = {0: "a non-negative integer", 1: "a positive integer"}.get(low, f"an integer of at least {low}")
    if high is not None:
        words += f" of at most {high}" + (f" ({unit})" if unit else "")
    return Rule(words, lambda v: _is_int(v) and v >= low and (high is None or v <= high))


def number(low: float, high: float | None = None, *, low_open: bool = False, high_open: bool = False) -> Rule:
    """A finite int or float from `low` up to `high` (no upper bound when None); `*_open` excludes that end."""
    if high is None:
        words = f"a number {'>' if low_open else '>='} {low:g}"
    else:
        words = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"

    def accepts(v) -> bool:
        return _is_number(v) and (v > low if low_open else v >= low) and \
            (high is None or (v < high if high_open else v <= high))

    return Rule(words, accepts)


def choice(*options: str) -> Rule:
    words = options[0] if len(options) == 1 else f"{', '.join(options[:-1])} or {options[-1]}"
    return Rule(words, lambda v: isinstance(v, str) and v in options)


def registered_task() -> Rule:
    """A name in the transfer stage's task registry, read when a value is checked (tasks registered after
    import count too; the import is deferred because rules sit below the stages)."""
    def accepts(value) -> bool:
        from tst.transfer.tasks import TASKS

        return isinstance(value, str) and value in TASKS

    return Rule("a registered task (seg, det, caption, ...)", accepts)


def pyramid() -> Rule:
    """transfer.det.pyramid: levels of the detection head's simple pyramid, as the head checks them (read
    when a value is checked: the head's module imports torch, which composing a config must not need)."""
    def accepts(value) -> bool:
        from tst.transfer.detection import pyramid_levels

        if not isinstance(value, list) or not all(map(_is_number, value)):
            return False
        try:
            return bool(pyramid_levels(value))
        except ValueError:
            return False

    return Rule("distinct scale factors from 4, 2, 1, 0.5 (transfer/detection.py: LEVELS), finest first", accepts)


NAME = Rule("a non-empty name", lambda v: isinstance(v, str) and v != "")


def flag() -> Rule:
    return Rule("true or false", lambda v: isinstance(v, bool))


def optional(rule: Rule) -> Rule:
    return Rule(f"null or {rule.expected}", lambda v: v is None or rule.accepts(v))


def ordered_pair(rule: Rule) -> Rule:
    """Two values each accepted by `rule`, the first not above the second (a range)."""
    return Rule(f"[low, high] with low <= high, each {rule.expected}",
                lambda v: isinstance(v, list) and len(v) == 2 and all(map(rule.accepts, v)) and v[0] <= v[1])


def each(rule: Rule) -> Rule:
    return Rule(rule.expected, rule.accepts, each=True)


def nonempty(rule: Rule) -> Rule:
    """A list `each` rule that also refuses an empty list."""
    return Rule(rule.expected, rule.accepts, each=True, nonempty=True)


POSITIVE, NON_NEGATIVE, STEPS = integer(1), integer(0), integer(1, MAX_STEPS)
SEED = NON_NEGATIVE
PIXELS = integer(1, MAX_PIXELS, "pixels per side; larger frames do not fit in memory")
FRACTION = number(0, 1, low_open=True)        # (0, 1]
PROBABILITY = number(0, 1)                    # [0, 1]
RATE = number(0, low_open=True)               # > 0
SHARE = number(0)                             # >= 0
WORKERS = integer(0, MAX_WORKERS, "processes")
MODEL_SIZES = ("tiny", "s", "b")  # configs/model/

RULES: dict[str, Rule] = {
    # collect
    **{f"collect.frames.{split}": integer(0, MAX_FRAMES, "frames per split")
       for split in ("pretrain", "eval", "transfer")},
    "collect.size": PIXELS,
    "collect.hfov_deg": number(0, 180, low_open=True, high_open=True),
    "collect.rgb_format": choice("png", "jpg"),
    "collect.seed": SEED,
    "collect.poses": choice("sampled", "scene"),
    "collect.real_rgb": flag(),
    **{f"collect.mix.{split}.{kind}": SHARE
       for split in ("pretrain", "eval", "transfer") for kind in ("views", "walks")},
    "collect.views.height_range": ordered_pair(SHARE),
    "collect.views.min_clearance": SHARE,
    "collect.views.spacing": RATE,
    "collect.views.pitch_deg": ordered_pair(number(-90, 90)),
    "collect.views.min_view_depth": SHARE,
    "collect.views.max_class_share": FRACTION,
    "collect.views.near_walks": SHARE,
    "collect.walks.step_m": RATE,
    "collect.walks.camera_height": RATE,
    "collect.walks.radius": SHARE,
    "collect.walks.frames_per_path": integer(1, MAX_FRAMES, "frames per split"),
    "collect.walks.cell": RATE,
    "collect.eval_min_distance": SHARE,
    "collect.edges.low": SHARE,
    "collect.edges.high": SHARE,
    "collect.min_box_pixels": NON_NEGATIVE,
    "collect.min_shared_classes": POSITIVE,
    "collect.shard_size": integer(1, MAX_FRAMES, "frames per shard"),
    "collect.workers": WORKERS,
    "collect.executor": choice("local", "ray"),
    "collect.overwrite": flag(),
    "collect.sheet_samples": integer(1, 100, "rows of a contact sheet"),
    # data
    "data.skip_corrupt": flag(),
    "data.batch_size": POSITIVE,
    "data.num_workers": WORKERS,
    "data.crop_scale": ordered_pair(FRACTION),
    "data.cache_frames": flag(),
    # model
    "model.dim": POSITIVE,
    "model.encoder_depth": POSITIVE,
    "model.decoder_depth": POSITIVE,
    "model.heads": POSITIVE,
    "model.patch": POSITIVE,
    "model.image_size": PIXELS,
    "model.mlp_ratio": RATE,
    # pretrain
    "pretrain.objective": choice("fourm", "multimae", "mae"),
    "pretrain.init": optional(Rule("4m21-b or a tst pretrain run folder",
                                   lambda v: v == "4m21-b" or (isinstance(v, str) and (Path(v) / "config.json").is_file()))),
    "pretrain.splits": nonempty(each(choice("pretrain", "transfer"))),
    "pretrain.external": each(NAME),
    "pretrain.test_space_share": PROBABILITY,
    "pretrain.frames": optional(integer(1, MAX_FRAMES, "frames per split")),
    "pretrain.label_ablation": flag(),
    "pretrain.input_budget": POSITIVE,
    "pretrain.target_budget": POSITIVE,
    "pretrain.mae_mask_ratio": number(0, 1, low_open=True, high_open=True),
    "pretrain.steps": STEPS,
    "pretrain.lr": RATE,
    "pretrain.weight_decay": SHARE,
    "pretrain.warmup_steps": integer(0, MAX_STEPS),
    "pretrain.grad_clip": SHARE,
    "pretrain.checkpoint_every": STEPS,
    "pretrain.log_every": STEPS,
    "pretrain.image_every": STEPS,
    "pretrain.seed": SEED,
    "pretrain.allow_weak_tokenizers": flag(),
    "pretrain.rgb_patch_norm": flag(),
    "pretrain.min_code_share": PROBABILITY,
    "pretrain.precomputed_tokens": flag(),
    "pretrain.tokenizer.levels": each(integer(2)),
    "pretrain.tokenizer.hidden": POSITIVE,
    "pretrain.tokenizer.steps": STEPS,
    "pretrain.tokenizer.lr": RATE,
    # transfer
    "transfer.mode": choice("full", "probe"),
    "transfer.fraction": FRACTION,
    "transfer.seed": SEED,
    "transfer.steps": STEPS,
    "transfer.lr": RATE,
    "transfer.backbone_lr_scale": SHARE,
    "transfer.layer_decay": FRACTION,
    "transfer.wise_alpha": PROBABILITY,
    "transfer.drop_path": number(0, 1, high_open=True),
    "transfer.head_first_steps": integer(0, MAX_STEPS),
    "transfer.joint_pretraining": SHARE,
    "transfer.weight_decay": SHARE,
    "transfer.color_jitter": PROBABILITY,
    "transfer.warmup_steps": integer(0, MAX_STEPS),
    "transfer.eval_batch_size": POSITIVE,
    "transfer.generalist_size": PIXELS,
    "transfer.head_width": POSITIVE,
    "transfer.seg_head": choice("pyramid", "linear"),
    "transfer.map_by_name": flag(),
    "transfer.probe.ridge": RATE,
    "transfer.held_out": each(NAME),
    "transfer.det.score_threshold": PROBABILITY,
    "transfer.det.iou_threshold": FRACTION,
    "transfer.det.pyramid": pyramid(),
    "transfer.caption.width": POSITIVE,
    "transfer.caption.beam": POSITIVE,
    "transfer.caption.max_words": POSITIVE,
    "transfer.caption.min_count": POSITIVE,
    "transfer.caption.meteor": flag(),
    # deploy
    "deploy.device": choice("cpu", "cuda", "auto"),
    "deploy.precision": choice("fp32", "bf16", "fp16", "int8"),
    "deploy.compile": flag(),
    "deploy.runtime": choice("torch", "onnx"),
    "deploy.export_frames": POSITIVE,
    "deploy.task": choice("explore", "find"),
    "deploy.score_threshold": PROBABILITY,
    "deploy.success_distance": RATE,
    "deploy.steps": STEPS,
    "deploy.rate_hz": RATE,
    "deploy.tasks": nonempty(each(registered_task())),
    "deploy.caption_every": integer(1, MAX_STEPS, "agent steps"),
    "deploy.overlap": flag(),
    "deploy.background_captions": flag(),
    "deploy.pace": flag(),
    "deploy.threads": integer(0, MAX_WORKERS, "threads"),
    "deploy.seed": SEED,
    "deploy.strip_frames": integer(1, 100, "rows of the strip"),
    "deploy.online.enabled": flag(),
    "deploy.online.every": integer(1, MAX_FRAMES, "frames per shard"),
    "deploy.online.pretrain_steps": STEPS,
    "deploy.online.observation_share": number(0, 1, low_open=True),
    "deploy.online.transfer_steps": optional(STEPS),
    "deploy.online.threads": integer(1, MAX_WORKERS, "threads"),
    # trainer, report, tracking, the run presets
    "trainer.num_nodes": POSITIVE,
    "trainer.deterministic": Rule("true, false or warn", lambda v: isinstance(v, bool) or v == "warn"),
    "report.fraction": optional(FRACTION),
    "report.rows": each(NAME),
    "tracking.enabled": flag(),
    "experiment.objectives": each(NAME),  # an objective or a variant: the pipeline checks which
    "experiment.variants": Rule("a mapping of names to lists of pretrain overrides",
                                lambda v: isinstance(v, dict) and all(isinstance(o, list) for o in v.values())),
    "transfer.backbone_name": optional(NAME),
    "experiment.seeds": nonempty(each(SEED)),
    "experiment.fractions": nonempty(each(FRACTION)),
    "experiment.seed_pretraining": flag(),
    "experiment.probe": flag(),
    **{f"experiment.{key}": Rule(f"a list of override lists, one per {kind} space (e.g. [[space.seed=11]])",
                                 lambda v: isinstance(v, list) and all(isinstance(o, list) for o in v))
       for key, kind in (("held_out", "held-out"), ("external", "external"))},
    "experiment.deploy_task": choice("explore", "find"),
}

# Top-level keys that mean different things in different stages.
STAGE_RULES: dict[str, dict[str, Rule]] = {
    "spaces": {"views": integer(1, 100, "rows of the contact sheet"), "size": PIXELS,
               "hfov_deg": number(0, 180, low_open=True, high_open=True), "height_range": ordered_pair(SHARE),
               "view_seed": SEED},
    "pretrain": {"predict_frames": integer(1, 100, "rows of the prediction sheet")},
    "bench": {"render_bench.sizes": nonempty(each(PIXELS)), "render_bench.frames": POSITIVE, "render_bench.process_frames": POSITIVE,
              "render_bench.process_size": PIXELS, "render_bench.workers": nonempty(each(integer(1, MAX_WORKERS, "processes"))),
              "collect_bench.frames": POSITIVE, "collect_bench.size": PIXELS,
              "collect_bench.workers": nonempty(each(integer(1, MAX_WORKERS, "processes"))),
              "collect_bench.reader_workers": each(WORKERS), "collect_bench.reader_batch": POSITIVE,
              "pretrain_bench.models": nonempty(each(choice(*MODEL_SIZES))), "pretrain_bench.steps": POSITIVE,
              "pretrain_bench.loader_steps": integer(4, MAX_STEPS), "pretrain_bench.loader_batch_size": POSITIVE,
              "pretrain_bench.loader_workers": WORKERS,
              "transfer_bench.batch_size": POSITIVE, "transfer_bench.steps": POSITIVE,
              "transfer_bench.eval_batch_size": POSITIVE, "transfer_bench.eval_batches": POSITIVE,
              "deploy_bench.models": nonempty(each(choice(*MODEL_SIZES))), "deploy_bench.sizes": nonempty(each(PIXELS)),
              "deploy_bench.cpu_runtimes": nonempty(each(choice("eager", "compiled", "onnx", "onnx-int8"))),
              "deploy_bench.gpu_precisions": each(choice("fp32", "bf16", "fp16")),
              "deploy_bench.seg_head": choice("linear", "pyramid"), "deploy_bench.head_width": POSITIVE,
              "deploy_bench.caption_words": POSITIVE, "deploy_bench.repeats": POSITIVE, "deploy_bench.warmup": NON_NEGATIVE,
              "gpu_bench.model": choice(*MODEL_SIZES), "gpu_bench.size": PIXELS, "gpu_bench.cpu_model": choice(*MODEL_SIZES),
              "gpu_bench.cpu_size": PIXELS, "gpu_bench.precisions": nonempty(each(choice("fp32", "bf16"))),
              "gpu_bench.modes": nonempty(each(choice("eager", "compiled", "cuda_graphs"))),
              "gpu_bench.batch_sizes": nonempty(each(POSITIVE)), "gpu_bench.steps": POSITIVE,
              "gpu_bench.caption_words": POSITIVE, "gpu_bench.repeats": POSITIVE, "gpu_bench.warmup": NON_NEGATIVE},
}


@dataclass(frozen=True)
class Relation:
    """A rule between keys, checked once each key passed its own rule; `message` is formatted with the
    values in the order of `keys`."""

    keys: tuple[str, ...]
    holds: Callable[..., bool]
    message: str


RELATIONS = [
    Relation(("model.image_size", "model.patch"), lambda size, patch: size % patch == 0,
             "model.image_size: expected a multiple of model.patch ({1}) so patches tile the frame, got {0}"),
    Relation(("model.dim", "model.heads"), lambda dim, heads: dim % heads == 0,
             "model.heads: expected a divisor of model.dim ({0}), got {1}"),
    Relation(("collect.edges.low", "collect.edges.high"), lambda low, high: low <= high,
             "collect.edges.high: expected at least collect.edges.low ({0}), got {1}"),
    Relation(("transfer.steps", "transfer.head_first_steps"), lambda steps, first: first < steps,
             "transfer.head_first_steps: expected fewer than transfer.steps ({0}), got {1}"),
]

_MISSING = object()


def _select(values: dict, key: str):
    node = values
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _problems(key: str, rule: Rule, value) -> list[str]:
    if not rule.each:
        return [] if rule.accepts(value) else [f"{key}: expected {rule.expected}, got {value!r}"]
    if not isinstance(value, list) or (rule.nonempty and not value):
        return [f"{key}: expected a {'non-empty ' if rule.nonempty else ''}list of values, each {rule.expected}, "
                f"got {value!r}"]
    return [f"{key}[{i}]: expected {rule.expected}, got {item!r}" for i, item in enumerate(value)
            if not rule.accepts(item)]


def check(stage: str, cfg: DictConfig) -> None:
    """Raise one TSTError naming every bad key of the resolved `cfg` (its value and what was expected)."""
    values = OmegaConf.to_container(cfg, resolve=True)
    problems, bad = [], set()
    for key, rule in (RULES | STAGE_RULES.get(stage, {})).items():
        value = _select(values, key)
        if value is not _MISSING and (found := _problems(key, rule, value)):
            problems += found
            bad.add(key)
    for relation in RELATIONS:
        args = [_select(values, key) for key in relation.keys]
        if _MISSING not in args and not bad & set(relation.keys) and not relation.holds(*args):
            problems.append(relation.message.format(*args))
    if problems:
        raise TSTError("; ".join(problems))
