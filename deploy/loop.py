"""The agent's perception loop: at every step the space renders an observation, the predictor runs on
it, and the loop records latency, deadline misses and online accuracy against the rendered truth.

With overlap on, the render process works on step i+1 while the predictor runs on step i, so the loop
period approaches max(render, infer) instead of their sum. Captions are wanted less often than labels and
boxes: the caption head runs every `caption_every` steps, and the steps between carry the newest caption
(scored online only on the step it describes). With background captions the caption head runs off the
loop's critical path, on a helper thread, so no step waits for a caption.
"""

from __future__ import annotations

import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from tst.errors import TSTError
from tst.taxonomy import Taxonomy

from tst.deploy.observations import Observation, RenderProcess
from tst.deploy.predictor import Prediction, Predictor


@dataclass
class SearchGoal:
    """deploy.task=find: stop when the detector reports `class_id` with score >= threshold; success when
    that class truly covers >= min_pixels pixels of the view at a median depth <= distance metres."""

    class_id: int
    name: str
    score_threshold: float
    distance: float
    min_pixels: int


@dataclass
class StepRecord:
    """One step's timings (seconds) and the step its caption describes; the observation and prediction
    only for the steps run_loop was asked to keep (a walk of thousands of steps would not fit in memory)."""

    step: int
    infer_s: float
    period_s: float
    busy_s: float  # the period before a paced loop's wait (unpaced: the period)
    render_s: float
    caption_step: int | None
    observation: Observation | None = None
    prediction: Prediction | None = None


@dataclass
class LoopResult:
    steps: list[StepRecord] = field(default_factory=list)
    metrics: dict = field(default_factory=dict)
    search: dict | None = None
    captioned: list[int] = field(default_factory=list)  # the steps whose observation got a caption


class BackgroundCaptions:
    """Captions off the loop's critical path: a helper thread captions one observation at a time (running
    the backbone again for it), and the loop takes each caption when it is ready. torch and ONNX Runtime
    release the GIL inside their kernels, so the thread uses the core the render process leaves idle."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="tst-caption")
        self.job: Future | None = None
        self.observation: Observation | None = None

    @property
    def idle(self) -> bool:
        return self.job is None

    def start(self, predictor: Predictor, observation: Observation) -> None:
        others = tuple(task for task in predictor.tasks if task != "caption")
        self.job, self.observation = self.pool.submit(predictor, observation.rgb, others), observation

    def take(self, wait: bool = False) -> tuple[Observation, Prediction] | None:
        """The captioned observation and its caption-only prediction once the job is done (with `wait`:
        after waiting for it); None while it runs or when none was started."""
        if self.job is None or not (wait or self.job.done()):
            return None
        prediction, observation = self.job.result(), self.observation
        self.job = self.observation = None
        return observation, prediction

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def search_goal(taxonomy: Taxonomy, target: str, score_threshold: float, distance: float,
                min_pixels: int) -> SearchGoal:
    """The goal for `deploy.target`; an unknown or uncountable class is a one-line error."""
    if target not in taxonomy.names:
        raise TSTError(f"deploy.target: '{target}' is not a class of this space (expected one of: "
                       f"{', '.join(taxonomy.names[c] for c in taxonomy.thing_ids)})")
    class_id = taxonomy.id(target)
    if not taxonomy.is_thing(class_id):
        raise TSTError(f"deploy.target: '{target}' is a stuff class without boxes; pick an object class")
    return SearchGoal(class_id, target, score_threshold, distance, min_pixels)


def found(prediction: Prediction, goal: SearchGoal) -> bool:
    if prediction.boxes is None:
        return False
    return bool(np.any((prediction.classes == goal.class_id) & (prediction.scores >= goal.score_threshold)))


def truly_visible(observation: Observation, goal: SearchGoal) -> tuple[bool, float | None]:
    """(visible within the distance, median depth of the target's pixels in metres or None)."""
    pixels = observation.semantic == goal.class_id
    if pixels.sum() < goal.min_pixels:
        return False, None
    distance = float(np.median(observation.depth[pixels]))
    return distance <= goal.distance, distance


class OnlineScores:
    """Running accuracy against the rendered truth, with the transfer stage's own metrics."""

    def __init__(self, predictor: Predictor):
        self.tasks = predictor.module.tasks
        self.scores = {name: task.new_score() for name, task in self.tasks.items()}

    def update(self, observation: Observation, prediction: Prediction, skip: tuple[str, ...] = ()) -> None:
        """Score `prediction` against `observation`'s truth, except the tasks in `skip` (not run this step)."""
        batch = truth_batch([observation])
        for name, score in self.scores.items():
            if name not in skip:
                score.update(self.tasks[name].scored([prediction]), batch)

    def compute(self) -> dict:
        result: dict = {}
        for score in self.scores.values():
            result |= {k: v for k, v in score.compute().items() if not isinstance(v, dict)}
        return result


def truth_batch(observations: list[Observation]) -> dict:
    """Observations as a transfer-stage batch (collate layout)."""
    return {"rgb": torch.stack([torch.from_numpy(o.rgb).permute(2, 0, 1).float() / 255 for o in observations]),
            "depth": torch.stack([torch.from_numpy(o.depth)[None] for o in observations]),
            "semantic": torch.stack([torch.from_numpy(o.semantic) for o in observations]),
            "boxes": [torch.from_numpy(o.boxes) for o in observations],
            "box_classes": [torch.from_numpy(o.box_classes) for o in observations],
            "caption": [o.caption for o in observations], "key": [str(o.step) for o in observations]}


def run_loop(predictor: Predictor, renderer: RenderProcess, steps: int, overlap: bool = True,
             goal: SearchGoal | None = None, progress=None, caption_every: int = 1, online=None,
             pace_hz: float | None = None, keep: Callable[[int], bool] = lambda step: True,
             background_captions: bool = False) -> LoopResult:
    """Run `steps` steps (fewer when a search ends); `progress(step)` is called after each. The caption
    head runs on steps 0, caption_every, 2 * caption_every, ...; other steps' predictions carry the newest
    caption, with `caption_step` the step it describes. With `background_captions` it runs on a helper
    thread instead: a step whose thread is idle, at least caption_every steps after the last captioned one,
    hands it its observation, and the caption joins the predictions from the step it is ready at (the one
    in flight at the end is waited for and scored). `online`: a tst.deploy.online.OnlineTST, told of every
    step; the specialist it returns is used from the next step on. `pace_hz`: a step starts no sooner than
    1 / pace_hz seconds after the previous one (a camera at that rate), else at once. `keep(step)`:
    whether the step's record holds its observation and prediction (the last step's always does)."""
    result = LoopResult()
    scores = OnlineScores(predictor)
    captions = "caption" in predictor.tasks
    background = BackgroundCaptions() if captions and background_captions else None
    caption, caption_step = None, None

    def caption_ready(done: tuple[Observation, Prediction] | None) -> None:
        nonlocal caption, caption_step
        if done is not None:
            observation, prediction = done
            caption, caption_step = prediction.caption, observation.step
            result.captioned.append(observation.step)
            scores.update(observation, prediction, tuple(task for task in predictor.tasks if task != "caption"))

    renderer.submit(0)
    last = time.perf_counter()
    try:
        for step in range(steps):
            observation = renderer.get()
            if overlap and step + 1 < steps:
                renderer.submit(step + 1)
            start = time.perf_counter()
            if background is not None:
                skip = ("caption",)
                caption_ready(background.take())
                if background.idle and (not result.captioned or step - result.captioned[-1] >= caption_every):
                    background.start(predictor, observation)
            else:
                skip = ("caption",) if captions and step % caption_every else ()
            prediction = predictor(observation.rgb, skip)
            infer_s = time.perf_counter() - start
            if captions and not skip:
                caption, caption_step = prediction.caption, step
                result.captioned.append(step)
            prediction.caption, prediction.caption_step = caption, caption_step
            scores.update(observation, prediction, skip)
            if online is not None:
                predictor = online.after_step(step, observation, prediction, skip, predictor) or predictor
            stop = goal is not None and found(prediction, goal)
            if not overlap and step + 1 < steps and not stop:
                renderer.submit(step + 1)
            busy_s = time.perf_counter() - last
            if pace_hz:
                time.sleep(max(0.0, last + 1.0 / pace_hz - time.perf_counter()))
            now = time.perf_counter()
            kept = keep(step) or stop or step + 1 == steps
            result.steps.append(StepRecord(step, infer_s, now - last, busy_s, observation.render_s,
                                           prediction.caption_step, observation if kept else None,
                                           prediction if kept else None))
            last = now
            if progress:
                progress(step)
            if stop:
                visible, distance = truly_visible(observation, goal)
                result.search = {"target": goal.name, "found_at_step": step, "success": visible,
                                 "target_distance_m": distance}
                if overlap and step + 1 < steps:
                    renderer.get()  # the step rendered ahead is not used
                break
        if background is not None:
            caption_ready(background.take(wait=True))
    finally:
        if background is not None:
            background.close()
    if goal is not None and result.search is None:
        result.search = {"target": goal.name, "found_at_step": None, "success": False, "target_distance_m": None}
    result.metrics = scores.compute()
    return result


def latency_summary(result: LoopResult, rate_hz: float) -> dict:
    """Perception latency and loop period percentiles (ms), FPS, deadline misses at `rate_hz`."""
    infer = np.array([s.infer_s for s in result.steps]) * 1000
    timed = result.steps[1:] or result.steps
    period = np.array([s.period_s for s in timed]) * 1000
    busy = np.array([s.busy_s for s in timed]) * 1000  # a paced step misses only if its work overran
    render = np.array([s.render_s for s in result.steps]) * 1000
    deadline = 1000.0 / rate_hz
    percentiles = lambda x: {f"p{q}": float(np.percentile(x, q)) for q in (50, 95, 99)}  # noqa: E731
    return {"steps": len(result.steps), "perception_ms": percentiles(infer), "render_ms": percentiles(render),
            "captioned_steps": len(result.captioned),
            "period_ms": percentiles(period), "fps": float(1000.0 / period.mean()),
            "sum_render_infer_ms": float(render.mean() + infer.mean()),
            "max_render_infer_ms": float(max(render.mean(), infer.mean())), "rate_hz": rate_hz,
            "deadline_ms": deadline, "deadline_misses": int((busy > deadline).sum())}
