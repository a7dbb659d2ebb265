"""`tst bench deploy`: batch-1 latency of the multi-task predictor (one backbone pass, segmentation,
detection and a caption) per model size and image size: eager vs torch.compile vs ONNX Runtime (fp32, and
the dense graph in int8) on the CPU; on a GPU, fp32 vs bf16 and eager vs CUDA graphs.

Heads here are randomly initialized. Latency depends on trained weights in two places: the caption's
length, so captions are generated to a fixed length (deploy_bench.caption_words) and every configuration
decodes the same number of tokens; and detection decoding, where an untrained head scores every location
near its prior, so all PRE_NMS candidates reach NMS: an upper bound on what a trained head costs there.

On the CPU the runtimes of one model@size take turns while they are timed (`_interleaved_latency`), so
the speed-ups over eager compare runtimes under the same machine load.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig
from rich.console import Console

from tst.benchmarks import save_report, target
from tst.config import composed
from tst.layers import ModelConfig
from tst.taxonomy import INDOOR

from tst.envs.registry import space_name
from tst.deploy.predictor import PRECISIONS, prepare_for_inference, to_prediction
from tst.transfer.backbones import ScratchViT
from tst.transfer.module import TransferModule
from tst.transfer.tasks import CaptionTask, DetectionTask, SegmentationTask

console = Console(stderr=True)


def fixed_length_greedy(decoder, features: torch.Tensor, length: int) -> torch.Tensor:
    """Greedy tokens (B, length) from <bos>, <eos> never chosen: the cost of a caption of `length` tokens.
    decoder: a CaptionDecoder, or an OnnxCaptionDecoder with features its dense graph's cross cache."""
    from tst.transfer.captioning import beam_search

    with torch.no_grad():
        return beam_search(decoder, features, 1, length, min_length=length)[0]


class FixedLengthCaptions(CaptionTask):
    """Captions of exactly `max_length` tokens, so random decoders cost what trained ones do."""

    def predict(self, head, features, image_size):
        tokens = fixed_length_greedy(head, features, self.max_length)
        return [self.vocabulary.decode(row) for row in tokens]

    def from_exported(self, head, outputs, image_size):
        return self.predict(head, outputs["caption_cross"], image_size)  # the exported head reads the cache


def multitask_model(model: str, size: int, caption_words: int, seg_head: str = "linear",
                    head_width: int = 32) -> TransferModule:
    """The three heads on a scratch backbone of `model` at `size` px; seg_head and head_width as
    transfer.seg_head and transfer.head_width (the presets' linear segmentation head and 32 channels)."""
    from tst.transfer.captioning import Vocabulary

    config = composed("pretrain", "model", [f"model={model}", f"model.image_size={size}"])
    vocabulary = Vocabulary.build([" ".join(INDOOR.names + ["a", "the", "with", "left", "right", "of", "and"])])
    tasks = [SegmentationTask(INDOOR, head_width, seg_head), DetectionTask(INDOOR, width=head_width),
             FixedLengthCaptions(vocabulary, beam=1, max_length=caption_words + 2)]
    return TransferModule(ScratchViT(ModelConfig(**config)), tasks, {"mode": "full"}).eval()


def _percentiles(seconds: list[float]) -> dict:
    ms = np.array(seconds) * 1000
    return {f"p{q}_ms": round(float(np.percentile(ms, q)), 3) for q in (50, 95, 99)}


def _latency(infer, repeats: int, warmup: int, cuda: bool) -> dict:
    for _ in range(warmup):
        infer()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        infer()
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return _percentiles(times)


ROUNDS = 4  # the CPU runtimes of one model@size take turns in this many blocks of their timed calls


def _interleaved_latency(runners: dict, repeats: int, warmups: dict[str, int]) -> dict[str, dict]:
    """Percentiles of each runner's latency (name -> infer()), the runners taking turns in ROUNDS blocks of
    ceil(repeats / ROUNDS) timed calls each, so that load from other processes on a shared machine hits
    every runtime alike and their ratios stay comparable. (Timed one runtime after the other, tiny@128's
    best speed-up over eager read 1.43-2.19x over six runs of the same code.) Each block starts with one
    untimed call, which pays for waking that runtime's threads after the others ran."""
    for name, infer in runners.items():
        for _ in range(warmups[name]):
            infer()
    seconds: dict[str, list[float]] = {name: [] for name in runners}
    per_round = -(-repeats // ROUNDS)
    for _ in range(ROUNDS):
        for name, infer in runners.items():
            infer()
            for _ in range(per_round):
                start = time.perf_counter()
                infer()
                seconds[name].append(time.perf_counter() - start)
    return {name: _percentiles(values) for name, values in seconds.items()}


def _torch_runner(module: TransferModule, size: int, device: str, precision: str, compile_mode: str | None):
    module = prepare_for_inference(module, torch.device(device), compile_mode is not None, compile_mode or None)
    x = torch.rand(1, 3, size, size, device=device)
    dtype = PRECISIONS[precision]

    def infer():
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            return to_prediction(module(x), module.tasks)

    return infer


def _onnx_runner(module: TransferModule, size: int, folder: Path, int8: bool):
    from tst.deploy.export import OnnxGraphs, export

    export(module, size, [torch.rand(3, size, size)], folder)
    graphs = OnnxGraphs(folder, module, int8=int8)
    x = torch.rand(1, 3, size, size)

    def infer():
        return to_prediction(graphs(x), module.tasks)

    return infer


def bench_deploy(cfg: DictConfig) -> dict:
    b = cfg.deploy_bench
    cuda = torch.cuda.is_available()
    report: dict = {"threads": torch.get_num_threads(), "caption_words": int(b.caption_words),
                    "cpu": {}, "gpu": {} if cuda else None}
    metrics: dict[str, float] = {}
    for model in b.models:
        for size in b.sizes:
            key = f"{model}@{size}"
            runners, warmups = {}, {}
            with tempfile.TemporaryDirectory() as tmp:
                for runtime in b.cpu_runtimes:
                    console.print(f"cpu {key} {runtime}: preparing ...")
                    module = multitask_model(model, int(size), int(b.caption_words), str(b.seg_head), int(b.head_width))
                    if runtime.startswith("onnx"):
                        runners[runtime] = _onnx_runner(module, int(size), Path(tmp) / runtime, runtime == "onnx-int8")
                    else:
                        runners[runtime] = _torch_runner(module, int(size), "cpu", "fp32",
                                                         "" if runtime == "compiled" else None)
                    warmups[runtime] = int(b.warmup) + (2 if runtime == "compiled" else 0)
                console.print(f"cpu {key}: timing {', '.join(runners)}, interleaved ...")
                rows = _interleaved_latency(runners, int(b.repeats), warmups)
            if "eager" in rows:
                for runtime in rows:
                    rows[runtime]["speedup_p50_vs_eager"] = round(rows["eager"]["p50_ms"] / rows[runtime]["p50_ms"], 3)
            report["cpu"][key] = rows
            metrics |= {f"cpu_{model}_{size}_{r}_p50_ms": v["p50_ms"] for r, v in rows.items()}
            if cuda:
                gpu_rows = {}
                for precision in b.gpu_precisions:
                    for mode, compile_mode in (("eager", None), ("cuda_graphs", "reduce-overhead")):
                        module = multitask_model(model, int(size), int(b.caption_words), str(b.seg_head), int(b.head_width))
                        infer = _torch_runner(module, int(size), "cuda", precision, compile_mode)
                        gpu_rows[f"{precision}_{mode}"] = _latency(infer, int(b.repeats), int(b.warmup) + 3, True)
                report["gpu"][key] = gpu_rows
                metrics |= {f"gpu_{model}_{size}_{r}_p99_ms": v["p99_ms"] for r, v in gpu_rows.items()}
            console.print(f"{key}: {rows}")
    report["targets"] = _targets(report)
    save_report(cfg, "deploy", space_name(cfg.space), report, metrics)
    return report


CPU_P50_GOALS_MS = {"tiny@128": 20.0, "s@224": 150.0}  # batch 1, every head, 2 cores, the best runtime
CPU_SPEEDUP_GOAL = 1.5  # compiled or ONNX Runtime against eager, per model and size
GPU_P99_GOAL_MS = 5.0  # ViT-B at 224 px, every head, the best precision and mode


def _targets(report: dict) -> dict:
    """The issue's verdicts on the rows measured: per model@size on the CPU, the best runtime against
    eager (and the latency goals of tiny@128 and s@224); on a GPU, b@224's best p99."""
    targets = {}
    for key, rows in report["cpu"].items():
        others = [rows[r]["speedup_p50_vs_eager"] for r in rows if r != "eager" and "speedup_p50_vs_eager" in rows[r]]
        if others:
            targets[f"cpu_{key}_speedup_over_eager"] = target(max(others), CPU_SPEEDUP_GOAL, "x eager p50 (best runtime)",
                                                              at_most=False)
        if key in CPU_P50_GOALS_MS:
            targets[f"cpu_{key}_p50"] = target(min(row["p50_ms"] for row in rows.values()), CPU_P50_GOALS_MS[key],
                                               "ms p50, best runtime", at_most=True)
    if report["gpu"] and "b@224" in report["gpu"]:
        targets["gpu_b@224_p99"] = target(min(v["p99_ms"] for v in report["gpu"]["b@224"].values()), GPU_P99_GOAL_MS,
                                          "ms p99, best precision and mode", at_most=True)
    return targets
