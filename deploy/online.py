"""Online TST (`tst deploy deploy.online=true`): the agent keeps specializing while it walks.

Every `deploy.online.every` steps the agent's observations (the sensor tier and the camera, never a
label) land as one more shard of a dataset in the collect stage's format, `<online folder>/observations`
(manifest outputs.origin "agent"). When a shard lands and no refit is running, a background process
refits the specialist:

1. pretraining continues from the current specialist's pretraining run (`pretrain.init=<that run>`) for
   `pretrain_steps` steps on the test space's collected pretrain frames mixed with every observation so far
   (`observation_share` of the frames are observations; `pretrain.external`), then
2. the heads are fitted again on the transfer split: the deployed model's own transfer recipe on the new
   backbone (`transfer_steps`; null: the recipe's own length).

When the refit lands, the loop swaps the new specialist in between two steps, without stopping; the next
refit continues the new pretraining. Scoring stays honest: the live specialist and the frozen one the walk
started with are both scored against the rendered truth of the same steps, per segment between swaps (the
frozen one runs outside the timed perception), and every refit's transfer run scores the eval split as
any transfer run does.
"""

from __future__ import annotations

import copy
import multiprocessing
import os
import queue
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tst.errors import TSTError
from tst.modalities import codec_table, manifest_entries
from tst.taxonomy import Taxonomy
from tst.workspace import fingerprint, read_json, read_manifest, write_manifest

from tst.collect.dataset import shard_path
from tst.collect.worker import stored_modalities, write_tar
from tst.deploy.loop import OnlineScores
from tst.deploy.observations import Observation
from tst.deploy.predictor import Prediction, Predictor
from tst.pretrain.run import read_pretrain_config
from tst.transfer.report import COLUMNS, HEADLINE, SCALE, _png, _pyplot



@dataclass(frozen=True)
class OnlineSettings:
    """deploy.online: a shard every `every` steps; a refit continues pretraining for `pretrain_steps`
    steps with `observation_share` (0, 1] of its frames from the observations, then fits the heads for
    `transfer_steps` (None: the deployed model's recipe) with `threads` torch threads."""

    every: int
    pretrain_steps: int
    observation_share: float
    transfer_steps: int | None
    threads: int

    @classmethod
    def from_config(cls, online) -> "OnlineSettings":
        steps = online.get("transfer_steps")
        return cls(int(online.every), int(online.pretrain_steps), float(online.observation_share),
                   None if steps is None else int(steps), int(online.threads))


class ObservationShards:
    """The agent's observations as a collected dataset holding one split, pretrain: `every` frames make a
    shard, each modality's tar written atomically; the manifest, rewritten after each shard, lists only
    complete shards, so a reader (or a kill) never sees half a shard."""

    def __init__(self, folder: Path, modalities: list[str], space: str, taxonomy: Taxonomy, every: int,
                 config: dict):
        self.folder, self.modalities, self.space, self.taxonomy = Path(folder), list(modalities), space, taxonomy
        self.every, self.config = every, config
        self.coders = codec_table("png")
        self.pending: list[Observation] = []
        self.shards: list[dict] = []

    @property
    def frames(self) -> int:
        """Frames in landed shards."""
        return sum(shard["frames"] for shard in self.shards)

    def add(self, observation: Observation) -> bool:
        """Buffer one observation; True when it completed a shard that has now landed."""
        if observation.sensors is None:
            raise TSTError("online TST: the observation carries no sensor modalities (PathSettings.sensors)")
        self.pending.append(observation)
        if len(self.pending) < self.every:
            return False
        self._land(self.pending)
        self.pending = []
        return True

    def _land(self, observations: list[Observation]) -> None:
        index = len(self.shards)
        for modality in stored_modalities(self.modalities):
            coder = self.coders[modality]
            write_tar(shard_path(self.folder, "pretrain", modality, index),
                      [(f"agent_{o.step:07d}.{coder.extension}", coder.encode(o.sensors[modality]))
                       for o in observations])
        self.shards.append({"index": index, "frames": len(observations),
                            "fingerprints": {m: fingerprint(shard_path(self.folder, "pretrain", m, index))
                                             for m in stored_modalities(self.modalities)}})
        outputs = {"space": self.space, "origin": "agent", "taxonomy": self.taxonomy.to_dict(),
                   "taxonomy_fingerprint": self.taxonomy.fingerprint(),
                   "modalities": stored_modalities(self.modalities), "rgb_format": "png",
                   "registry": manifest_entries(self.modalities),
                   "splits": {"pretrain": {"frames": self.frames, "shards": self.shards}}}
        # stage "collect": the readers (FrameDataset, pretrain.external) take it as a collected dataset
        write_manifest(self.folder, "collect", self.config, {}, outputs)


@dataclass
class RefitJob:
    """What the background process runs: two whole stage configs (the transfer one gets the new backbone)."""

    number: int
    observations: int  # agent frames in its pretraining
    pretrain: dict
    transfer: dict
    threads: int
    log: str


def _refit(job: RefitJob, replies) -> None:
    """The refit process: its output goes to the job's log (the loop owns the console)."""
    with open(job.log, "w") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
    try:
        import torch
        from omegaconf import OmegaConf

        from tst.pretrain.run import run as pretrain
        from tst.quiet import quiet_libraries
        from tst.transfer.run import run as transfer

        quiet_libraries()
        torch.set_num_threads(job.threads)
        backbone = pretrain(OmegaConf.create(job.pretrain))
        job.transfer["transfer"]["backbone"] = str(backbone)
        replies.put(("done", str(backbone), str(transfer(OmegaConf.create(job.transfer)))))
    except BaseException as error:  # reported to the loop, which raises it as one line
        replies.put(("error", (str(error).splitlines() or [type(error).__name__])[0]))


class Refit:
    """One refit in a spawned process (pretraining is CPU-bound Python: a thread would take the loop's GIL)."""

    def __init__(self, job: RefitJob, started_step: int):
        context = multiprocessing.get_context("spawn")
        self.job, self.started_step, self.started = job, started_step, time.perf_counter()
        self.replies = context.Queue()
        self.process = context.Process(target=_refit, args=(job, self.replies), daemon=True)
        self.process.start()

    def poll(self) -> tuple | None:
        """The process's reply when it has finished, else None."""
        try:
            return self.replies.get_nowait()
        except queue.Empty:
            if not self.process.is_alive() and self.replies.empty():
                return ("error", f"exited with code {self.process.exitcode} before replying")
            return None

    def stop(self) -> None:
        if self.process.is_alive():
            self.process.terminate()
        self.process.join(timeout=10)


@dataclass
class Segment:
    """The steps one specialist was live for, scored for it and for the frozen specialist."""

    model: str
    first_step: int
    live: OnlineScores
    frozen: OnlineScores
    last_step: int | None = None

    def summary(self) -> dict:
        return {"model": self.model, "first_step": self.first_step, "last_step": self.last_step,
                "live": self.live.compute(), "frozen": self.frozen.compute()}


class OnlineTST:
    """Drives online TST from the agent loop: after_step() after every step, close() at the end.
    frozen: the deployed specialist; folder: where observations, refit runs and their logs go; load: a
    transfer run folder -> its predictor (with the deploy settings); space: the space's name; config: the
    deploy config (recorded in the observations' manifest)."""

    def __init__(self, settings: OnlineSettings, frozen: Predictor, folder: Path, load: Callable[[Path], Predictor],
                 space: str, config: dict):
        self.settings, self.frozen, self.folder, self.load = settings, frozen, Path(folder), load
        model = frozen.model.run_dir
        inputs = read_manifest(model)["inputs"]
        if "backbone" not in inputs:
            raise TSTError(f"deploy.online: {model} has no tst pretrain backbone ({frozen.model.backbone.name}); "
                           "online TST continues the specialist's pretraining, so deploy a transfer run of a "
                           "pretrained backbone")
        self.pretrain_run = Path(inputs["backbone"]["path"])  # the pretraining the next refit continues
        self.pretrain_config = read_pretrain_config(self.pretrain_run)
        self.dataset = Path(read_manifest(self.pretrain_run)["inputs"]["dataset"]["path"])
        self.transfer_config = read_manifest(model)["config"]
        self.shards = ObservationShards(self.folder / "observations", list(self.pretrain_config["pretrain"]["modalities"]),
                                        space, frozen.taxonomy, settings.every, config)
        self.segments = [self._segment(model.name, 0, frozen)]
        self.swaps: list[dict] = []
        self.refit: Refit | None = None

    @property
    def modalities(self) -> tuple[str, ...]:
        """The sensor modalities each observation must carry."""
        return tuple(self.shards.modalities)

    def _segment(self, model: str, first_step: int, live: Predictor) -> Segment:
        return Segment(model, first_step, OnlineScores(live), OnlineScores(self.frozen))

    def after_step(self, step: int, observation: Observation, prediction: Prediction, skip: tuple[str, ...],
                   live: Predictor) -> Predictor | None:
        """Score the step, store the observation, start or land a refit; the new specialist when one
        landed (the loop uses it from the next step on), else None."""
        segment = self.segments[-1]
        segment.live.update(observation, prediction, skip)
        segment.frozen.update(observation, prediction if live is self.frozen else self.frozen(observation.rgb, skip),
                              skip)
        segment.last_step = step
        if self.shards.add(observation) and self.refit is None:
            self.refit = Refit(self._job(), step)
        reply = self.refit.poll() if self.refit is not None else None
        return None if reply is None else self._land(step, reply)

    def _job(self) -> RefitJob:
        number = len(self.swaps) + 1
        pretrain = copy.deepcopy(self.pretrain_config)
        p, s = pretrain["pretrain"], self.settings
        own = pretraining_frame_count(self.dataset, p.get("splits", ["pretrain"]))
        own = min(own, round(self.shards.frames * (1 - s.observation_share) / s.observation_share))
        steps = s.pretrain_steps
        p.update(init=str(self.pretrain_run), steps=steps, warmup_steps=min(int(p["warmup_steps"]), steps // 10),
                 external=[str(self.shards.folder)], test_space_share=own / (own + self.shards.frames),
                 frames=own + self.shards.frames, checkpoint_every=steps, image_every=steps, seed=int(p["seed"]) + number)
        transfer = copy.deepcopy(self.transfer_config)
        if s.transfer_steps is not None:
            transfer["transfer"]["steps"] = s.transfer_steps
        transfer["transfer"]["held_out"] = []
        for config in (pretrain, transfer):
            config.update(data_dir=str(self.dataset), workspace_dir=str(self.folder), run_name=f"swap-{number}",
                          resume=None)
            config["tracking"]["enabled"] = False
            config["data"]["num_workers"] = 0
        return RefitJob(number, self.shards.frames, pretrain, transfer, s.threads, str(self.folder / f"swap-{number}.log"))

    def _land(self, step: int, reply: tuple) -> Predictor:
        refit, self.refit = self.refit, None
        if reply[0] == "error":
            raise TSTError(f"online TST refit {refit.job.number}: {reply[1]} (log: {refit.job.log})")
        backbone, model = Path(reply[1]), Path(reply[2])
        live = self.load(model)
        self.pretrain_run = backbone  # the next refit continues this pretraining
        self.swaps.append({"swap": refit.job.number, "started_step": refit.started_step, "swapped_step": step + 1,
                           "seconds": round(time.perf_counter() - refit.started, 1),
                           "observations": refit.job.observations,
                           "pretrain_run": str(backbone), "transfer_run": str(model),
                           "eval": eval_scores(model)})
        self.segments.append(self._segment(model.name, step + 1, live))
        return live

    def close(self) -> dict:
        """Stop a refit still running (its runs are left unfinished) and summarize the walk."""
        unfinished = None
        if self.refit is not None:
            unfinished = self.refit.job.number
            self.refit.stop()
        return {"folder": str(self.folder), "every": self.settings.every, "pretrain_steps": self.settings.pretrain_steps,
                "observation_share": self.settings.observation_share, "transfer_steps": self.settings.transfer_steps,
                "observations": self.shards.frames, "frozen_eval": eval_scores(self.frozen.model.run_dir),
                "swaps": self.swaps, "segments": [s.summary() for s in self.segments if s.last_step is not None],
                "unfinished_refit": unfinished}


def pretraining_frame_count(dataset: Path, splits: list[str]) -> int:
    """Frames of the dataset's `splits` (those a pretraining run reads)."""
    held = read_manifest(dataset)["outputs"]["splits"]
    return sum(int(held[split]["frames"]) for split in splits if split in held)


def eval_scores(transfer_run: Path) -> dict:
    """The headline eval-split scores of a transfer run (its metrics.json)."""
    metrics = read_json(Path(transfer_run) / "metrics.json", "the metrics of a tst transfer run")
    return {k: float(metrics[k]) for k in HEADLINE if isinstance(metrics.get(k), (int, float))}


def online_chart(summary: dict) -> bytes:
    """online.png, one panel per headline metric: along the path, the live specialist's score per segment
    (solid) and the frozen specialist's on the same steps (dashed); on the eval split, the score of the
    specialist in use (solid steps) and the frozen one's (dotted). Swaps are vertical lines."""
    metrics = [m for m in HEADLINE if any(m in s["live"] for s in summary["segments"])]
    figure, axes = _pyplot().subplots(1, len(metrics), figsize=(3.8 * len(metrics), 3.2), squeeze=False)
    swaps = len(summary["swaps"])
    cut = f", refit {summary['unfinished_refit']} cut short by the end of the walk" if summary["unfinished_refit"] else ""
    figure.suptitle(f"online TST: a refit when {summary['every']} more steps are observed ({swaps} swap"
                    f"{'' if swaps == 1 else 's'}, {summary['observations']} observations{cut})\n"
                    "path scores: mean over each segment between swaps", y=1.15, fontsize=10)
    end = max(s["last_step"] for s in summary["segments"]) + 1
    for axis, metric in zip(axes[0], metrics):
        middles = [(s["first_step"] + s["last_step"]) / 2 for s in summary["segments"]]
        for key, style, label in (("live", "-", "path: live"), ("frozen", "--", "path: frozen")):
            axis.plot(middles, [s[key].get(metric, float("nan")) * SCALE for s in summary["segments"]],
                      style, marker="o", color="C0", label=label)
        starts = [0] + [swap["swapped_step"] for swap in summary["swaps"]]
        scores = [summary["frozen_eval"].get(metric, float("nan"))] + \
            [swap["eval"].get(metric, float("nan")) for swap in summary["swaps"]]
        axis.step(starts + [end], [v * SCALE for v in scores + scores[-1:]], where="post", color="C1",
                  label="eval split: in use")
        axis.axhline(scores[0] * SCALE, color="C1", linestyle=":", label="eval split: frozen")
        for swap in summary["swaps"]:
            axis.axvline(swap["swapped_step"], color="grey", linewidth=0.6)
        axis.set_title(COLUMNS[metric])
        axis.set_xlabel("agent step")
    axes[0][0].set_ylabel(f"score x{SCALE}")
    axes[0][0].legend(fontsize=6)
    return _png(figure)
