"""`tst deploy export`: the multi-task predictor as torch.export (.pt2) and ONNX graphs, checked against
PyTorch on eval frames before anything is written.

The graphs, each with fixed shapes:
  dense.{pt2,onnx}    rgb (1, 3, S, S) in [0, 1] -> features, then each task's `export_outputs`
                      (segmentation logits channels last, raw detection outputs, the caption decoder's
                      cross-attention keys and values: whichever heads the model has), outputs named in
                      the graph
  caption.pt2         one decoding step on key/value caches of fixed size (CaptionDecoder.step): tokens
                      (K,), position (), self cache (2, depth, K, heads, max_length, d), then each layer's
                      cross-attention keys and values (depth + depth inputs, each (K, heads, N, d)) ->
                      next-token logits (K, vocab), the updated self cache; K = the beam width.
                      caption.onnx: the same step, written for beam search (beam > 1)
  caption-greedy.onnx written instead of caption.onnx when the beam is 1: the whole greedy decoding as one
                      ONNX Loop over that step (CaptionGreedy), cross cache (2, depth, 1, heads, N, d),
                      max_length (), min_length () -> tokens (1, decoder max_length), total (1,), length
                      (1,), steps (), stopping when the caption ends
  dense-int8.onnx     the dense graph with every MatMul's weights in int8 (deploy/quantize.py), for
                      `deploy.runtime=onnx deploy.precision=int8`; written only when its outputs stay within
                      INT8_TOLERANCE of PyTorch's on the check frames
Box decoding, NMS and the beam search run in torch on the graphs' outputs, for every runtime.

The folder's manifest.json (stage "export") records the transfer model it came from (path and
fingerprint), each graph file's sha256 and the export format (EXPORT_FORMAT); `deploy.runtime=onnx` checks
all three before loading a graph.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tst.errors import TSTError
from tst.workspace import MANIFEST, file_sha256, fingerprint, read_manifest, staged_directory, write_manifest

from tst.deploy.quantize import INT8_GRAPH, INT8_TOLERANCE, quantize_dense
from tst.transfer.module import TransferModule

TOLERANCE = 1e-4  # max abs difference allowed between ONNX Runtime and PyTorch outputs
# The layout of the graphs' outputs, recorded in the manifest; an export of another format is refused
# rather than misread. 2: segmentation logits channels last (seg_logits_nhwc). 3: greedy captions as one
# graph (caption-greedy.onnx). 4: the caption step takes each layer's cross keys and values as inputs.
EXPORT_FORMAT = 4
GREEDY_GRAPH = "caption-greedy.onnx"
GRAPH_FILES = ("dense.pt2", "dense.onnx", INT8_GRAPH, "caption.pt2", "caption.onnx", GREEDY_GRAPH)
REEXPORT = "re-run tst deploy export (after removing the folder)"


def check_export(folder: Path, model_dir: Path | None, graphs: list[str]) -> None:
    """The export in `folder` has this tst's EXPORT_FORMAT, was made from `model_dir` (its fingerprint) and
    each of `graphs` is there with the sha256 its manifest records; a one-line TSTError naming the file
    otherwise."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        raise TSTError(f"{folder / MANIFEST}: missing; expected the export manifest written by tst deploy export; "
                       f"{REEXPORT}")
    try:
        manifest = read_manifest(folder)
    except TSTError as error:
        raise TSTError(f"{error}; {REEXPORT}") from None
    recorded = manifest["outputs"].get("graphs")
    model = (manifest.get("inputs") or {}).get("model")
    if manifest.get("stage") != "export" or not isinstance(recorded, dict) or (
            model_dir is not None and not isinstance(model, dict)):
        raise TSTError(f"{folder / MANIFEST}: not an export manifest (no model fingerprint and graph hashes); {REEXPORT}")
    if manifest["outputs"].get("format") != EXPORT_FORMAT:
        raise TSTError(f"{folder / MANIFEST}: export format {manifest['outputs'].get('format')}, this tst reads "
                       f"format {EXPORT_FORMAT}; {REEXPORT}")
    if model_dir is not None and model.get("fingerprint") != fingerprint(model_dir):
        raise TSTError(f"{folder / MANIFEST}: the export was made from another model than {model_dir} (fingerprint "
                       f"{model.get('fingerprint')}, the model's is {fingerprint(model_dir)}); {REEXPORT}")
    for name in graphs:
        path = folder / name
        if name not in recorded:
            refused = (manifest["outputs"].get("int8") or {}).get("refused") if name == INT8_GRAPH else None
            if refused:
                raise TSTError(f"{path}: not written by tst deploy export: {refused}; use deploy.precision=fp32")
            raise TSTError(f"{path}: not in the export manifest {folder / MANIFEST}; {REEXPORT}")
        if not path.is_file():
            raise TSTError(f"{path}: missing; the export manifest lists it; {REEXPORT}")
        if file_sha256(path) != recorded[name]:
            raise TSTError(f"{path}: does not match the export manifest (sha256 differs: corrupt, replaced or "
                           f"edited); {REEXPORT}")


def dense_names(module: TransferModule, image_size: int) -> list[str]:
    """Output names of the dense graph, in order: the features, then each task's `export_outputs`."""
    with torch.no_grad():
        return list(DenseGraph(module, image_size).named_outputs(torch.zeros(1, 3, image_size, image_size)))


class DenseGraph(nn.Module):
    """One backbone pass and every task's exported outputs: rgb (1, 3, S, S) -> tuple of tensors, named by
    `dense_names`."""

    def __init__(self, module: TransferModule, image_size: int):
        super().__init__()
        self.module, self.size = module, (image_size, image_size)

    def named_outputs(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.module.backbone(rgb)
        outputs = {"features": features}
        for name, task in self.module.tasks.items():
            outputs |= task.export_outputs(self.module.heads[name], features, self.size)
        return outputs

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.named_outputs(rgb).values())


class CaptionStep(nn.Module):
    """CaptionDecoder.step as a graph: (tokens, position, self cache, then the depth layers' cross keys and
    the depth layers' cross values: `cross_layers`) -> (logits, self cache). The layers come as separate
    inputs because a graph that sliced them out of the whole cross cache copied them at every step (tiny's
    step with beam 3: 0.60 against 0.38 ms at 128 px, 1.32 against 0.61 ms at 224; ONNX Runtime, 1 thread)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, tokens, position, self_cache, *layers) -> tuple[torch.Tensor, torch.Tensor]:
        depth = len(layers) // 2
        return self.decoder.step(tokens, position, self_cache, (layers[:depth], layers[depth:]))


def cross_layers(cross) -> list:
    """A cross cache (2, depth, K, heads, N, d), torch or numpy, as CaptionStep's last inputs: views of each
    layer's keys, then of each layer's values."""
    return [cross[kind, layer] for kind in range(2) for layer in range(cross.shape[1])]


def caption_inputs(depth: int) -> list[str]:
    """The caption step graph's input names for a decoder of `depth` layers."""
    return (["tokens", "position", "self_cache"] + [f"cross_keys_{i}" for i in range(depth)]
            + [f"cross_values_{i}" for i in range(depth)])


CAPTION_OUTPUTS = ["logits", "next_self_cache"]


class CaptionGreedy(nn.Module):
    """CaptionDecoder.greedy as one graph: (cross cache (2, depth, B, heads, N, d), max_length (), min_length
    ()) -> tokens (B, decoder max_length) int64 (<bos> first, <pad> after the last decoded position), total
    (B,) nats, length (B,), steps () = positions decoded. The loop is torch's while_loop (an ONNX Loop in
    the graph), so a caption costs one graph run instead of one per token: tiny's 17-token caption took
    2.9 ms in one run against 4.9 ms as 17 step runs with their Python bookkeeping (ONNX Runtime, 2 cores)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def forward(self, cross, max_length, min_length) -> tuple[torch.Tensor, ...]:
        from torch._higher_order_ops import while_loop

        from tst.transfer.captioning import BOS, PAD, banned_tokens, greedy_step

        decoder, B = self.decoder, cross.shape[2]
        max_length = max_length.clamp(max=decoder.max_length)  # the caches hold no more positions
        # Each layer's keys and values as inputs of the loop, split from the cache once: sliced from it inside
        # the loop, they were copied at every token (tiny@224's caption: 9.2 ms, against 5.1 ms so). Copies,
        # since while_loop refuses inputs that alias one another.
        layers = [layer.clone() for layer in cross_layers(cross)]
        cross = (layers[:len(layers) // 2], layers[len(layers) // 2:])
        slots = torch.arange(decoder.max_length)
        tokens = torch.where(slots == 0, BOS, PAD).expand(B, -1).clone()  # (B, max_length)

        def unfinished(position, last, self_cache, tokens, total, length, finished):
            return (position < max_length - 1) & ~finished.all()

        def one_token(position, last, self_cache, tokens, total, length, finished):
            banned = banned_tokens(decoder.head.out_features, position + 1 < min_length)
            last, self_cache, total, length, finished = greedy_step(
                decoder, position, last, self_cache, cross, total, length, finished, banned)
            tokens = torch.where(slots == position + 1, last[:, None], tokens)
            return position + 1, last, self_cache, tokens, total, length, finished

        start = (torch.zeros((), dtype=torch.long), torch.full((B,), BOS), decoder.empty_self_cache(B), tokens,
                 torch.zeros(B), torch.zeros(B), torch.zeros(B, dtype=torch.bool))
        steps, _, _, tokens, total, length, _ = while_loop(unfinished, one_token, start)
        return tokens, total, length, steps


GREEDY_INPUTS, GREEDY_OUTPUTS = ["cross", "max_length", "min_length"], ["tokens", "total", "length", "steps"]


class OnnxCaptionDecoder:
    """The exported caption graph behind the interface beam search uses (memory, cross_cache,
    empty_self_cache, step, greedy, max_length): the cross cache comes precomputed from the dense graph.
    `session` runs caption.onnx (`step`, for beam search over `rows` = beam rows) or, with greedy=True,
    caption-greedy.onnx (`greedy`)."""

    training = False

    def __init__(self, session, decoder: nn.Module, rows: int, greedy: bool = False):
        self.session, self.decoder, self.rows, self.is_greedy = session, decoder, rows, greedy
        self.max_length = decoder.max_length

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def memory(self, cross: torch.Tensor) -> torch.Tensor:
        return cross

    def cross_cache(self, cross: torch.Tensor) -> torch.Tensor:
        return cross

    def empty_self_cache(self, rows: int, device=None) -> torch.Tensor:
        return self.decoder.empty_self_cache(rows)

    def step(self, tokens, position, self_cache, cross) -> tuple[torch.Tensor, torch.Tensor]:
        if self.is_greedy:
            raise TSTError(f"caption.onnx: not exported (the transfer run's beam is 1: its captions decode in "
                           f"{GREEDY_GRAPH}); re-export with the beam width to search with")
        if tokens.shape[0] != self.rows:
            raise TSTError(f"caption.onnx: exported for {self.rows} beam rows, got {tokens.shape[0]}; re-export "
                           "with the transfer run's beam width")
        arrays = [t.cpu().numpy() for t in (tokens, position, self_cache)] + cross_layers(cross.cpu().numpy())
        inputs = dict(zip(caption_inputs(cross.shape[1]), arrays))
        logits, self_cache = self.session.run(None, inputs)
        return torch.from_numpy(logits), torch.from_numpy(self_cache)

    def greedy(self, cross: torch.Tensor, max_length: int, min_length: int = 0
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if not self.is_greedy:
            raise TSTError(f"{GREEDY_GRAPH}: not exported (the transfer run's beam is {self.rows}); re-export "
                           "with beam 1")
        tokens, total, length, steps = self.session.run(None, {
            "cross": cross.cpu().numpy(), "max_length": np.array(max_length, dtype=np.int64),
            "min_length": np.array(min_length, dtype=np.int64)})
        return torch.from_numpy(tokens[:, :int(steps) + 1]), torch.from_numpy(total), torch.from_numpy(length)


def _session(path: Path, threads: int = 0):
    """An ONNX Runtime CPU session of the graph at `path`, on `threads` intra-op threads (0: one per core)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    # Idle intra-op threads would spin between runs, taking the cores from the torch code around each run
    # (box decoding, beam search): tiny@128 with every head took 104 ms per frame with spinning, 29 without.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxGraphs:
    """ONNX Runtime sessions of an export folder; __call__(rgb (1, 3, S, S)) -> predictions as
    TransferModule.forward gives them. int8: the dense graph's int8 variant (the caption step stays fp32)."""

    def __init__(self, folder: Path, module: TransferModule, model_dir: Path | None = None, int8: bool = False):
        if not folder.is_dir():
            raise TSTError(f"{folder}: no export there; run tst deploy export first")
        dense = INT8_GRAPH if int8 else "dense.onnx"
        caption = None
        if "caption" in module.tasks:
            beam = module.tasks["caption"].beam
            caption = GREEDY_GRAPH if beam == 1 else "caption.onnx"
        check_export(folder, model_dir, [dense] + ([caption] if caption else []))
        self.module = module
        self.dense = _session(folder / dense)
        self.names = [output.name for output in self.dense.get_outputs()]
        self.caption = None
        if caption:
            # One thread: the step's tensors are a few rows, so waking a second thread costs more than it
            # saves (tiny's step: 0.36 against 0.46 ms on 2 cores; its greedy graph at 224 px: 4.2 against 5.5).
            self.caption = OnnxCaptionDecoder(_session(folder / caption, threads=1), module.heads["caption"], beam,
                                              greedy=caption == GREEDY_GRAPH)

    def run_dense(self, rgb: torch.Tensor) -> dict[str, torch.Tensor]:
        values = self.dense.run(None, {"rgb": rgb.detach().cpu().float().numpy()})
        return {name: torch.from_numpy(v) for name, v in zip(self.names, values)}

    def head(self, name: str):
        """What decodes task `name`'s graph outputs: the exported caption step for captions, else the head."""
        return self.caption if name == "caption" else self.module.heads[name]

    def __call__(self, rgb: torch.Tensor, skip: tuple[str, ...] = ()) -> dict:
        outputs, size = self.run_dense(rgb), (rgb.shape[-2], rgb.shape[-1])
        return {name: task.from_exported(self.head(name), outputs, size)
                for name, task in self.module.tasks.items() if name not in skip}


def _export_onnx(graph: nn.Module, example: tuple, path: Path, input_names: list[str], output_names: list[str]) -> None:
    onnx_program = torch.onnx.export(graph, example, dynamo=True, input_names=input_names,
                                     output_names=output_names, verbose=False)
    onnx_program.save(str(path))


def _max_difference(expected: np.ndarray, actual: np.ndarray) -> float:
    """Largest absolute difference; equal values (infinities included) differ by 0, a NaN on one side
    only by infinity."""
    with np.errstate(invalid="ignore"):
        difference = np.where(expected == actual, 0.0, np.abs(expected.astype(np.float64) - actual))
    return float(np.nan_to_num(difference, nan=np.inf).max()) if difference.size else 0.0


def export(module: TransferModule, image_size: int, frames: list[torch.Tensor], out: Path,
           model_dir: Path | None = None) -> dict:
    """Write dense/caption graphs (.pt2 and .onnx) to `out` iff ONNX Runtime matches PyTorch within
    TOLERANCE on every frame (each (3, S, S) in [0, 1]) and every output, and the dense graph's int8
    variant iff it stays within INT8_TOLERANCE (relative); returns {"max_abs_difference": output -> the fp32
    graphs' largest difference, "int8": `_check_int8`'s record}. A failing fp32 check raises TSTError and
    writes nothing. With `model_dir` (the transfer run) the folder's manifest records its fingerprint; it
    records each graph's sha256 either way."""
    module = module.cpu().eval()
    dense = DenseGraph(module, image_size).eval()
    example = (frames[0][None].float(),)
    differences: dict[str, float] = {}
    names = dense_names(module, image_size)
    with staged_directory(out) as tmp, torch.no_grad():
        torch.export.save(torch.export.export(dense, example), str(tmp / "dense.pt2"))
        _export_onnx(dense, example, tmp / "dense.onnx", ["rgb"], names)
        session = _session(tmp / "dense.onnx")
        expected_outputs = [{name: e.numpy() for name, e in dense.named_outputs(frame[None].float()).items()}
                            for frame in frames]
        for frame, expected in zip(frames, expected_outputs):
            actual = session.run(names, {"rgb": frame[None].float().numpy()})
            for (name, e), a in zip(expected.items(), actual):
                differences[name] = max(differences.get(name, 0.0), _max_difference(e, a))
        if "caption" in module.heads:
            task, decoder = module.tasks["caption"], module.heads["caption"]
            crosses = [torch.from_numpy(expected["caption_cross"]) for expected in expected_outputs]
            step = CaptionStep(decoder).eval()
            tokens = torch.randint(4, len(task.vocabulary), (task.beam, task.max_length))
            tokens[:, 0] = 1  # <bos>
            depth = crosses[0].shape[1]
            example = (tokens[:, 0], torch.tensor(0), decoder.empty_self_cache(task.beam),
                       *cross_layers(crosses[0].repeat_interleave(task.beam, dim=2)))
            torch.export.save(torch.export.export(step, example), str(tmp / "caption.pt2"))
            if task.beam == 1:
                differences["caption_greedy"] = _export_greedy(decoder, crosses, task.max_length, tmp / GREEDY_GRAPH)
            else:
                _export_onnx(step, example, tmp / "caption.onnx", caption_inputs(depth), CAPTION_OUTPUTS)
                caption_session = _session(tmp / "caption.onnx")
                for cross in crosses:  # a whole teacher-forced caption, step by step, in both runtimes
                    cross = cross.repeat_interleave(task.beam, dim=2)
                    self_cache = decoder.empty_self_cache(task.beam)
                    for position in range(task.max_length):
                        arguments = (tokens[:, position], torch.tensor(position), self_cache, *cross_layers(cross))
                        expected, self_cache = step(*arguments)
                        feed = dict(zip(caption_inputs(depth), (a.numpy() for a in arguments)))
                        actual = caption_session.run(None, feed)[0]
                        differences["caption_logits"] = max(differences.get("caption_logits", 0.0),
                                                            _max_difference(expected.numpy(), actual))
        worst = max(differences, key=differences.get)
        if differences[worst] > TOLERANCE:
            raise TSTError(f"export: ONNX Runtime differs from PyTorch on '{worst}' by {differences[worst]:.2e} "
                           f"(> {TOLERANCE:g}) over {len(frames)} eval frames; nothing written")
        int8 = _check_int8(tmp, frames, expected_outputs)
        graphs = {name: file_sha256(tmp / name) for name in GRAPH_FILES if (tmp / name).is_file()}
        write_manifest(tmp, "export", {"image_size": image_size, "tasks": list(module.tasks)},
                       {"model": model_dir} if model_dir is not None else {},
                       {"graphs": graphs, "format": EXPORT_FORMAT, "max_abs_difference": differences, "int8": int8})
    return {"max_abs_difference": differences, "int8": int8}


def _export_greedy(decoder: nn.Module, crosses: list[torch.Tensor], max_length: int, path: Path) -> float:
    """Write the greedy caption graph (CaptionGreedy) to `path` and score it on each cross cache (one
    image's, from the check frames), free to stop at <eos> and forced to full length: the largest, over its
    tokens, of how much more log-probability (nats) PyTorch's decoder gives the best token greedy decoding
    may choose than the token the graph chose (0 when the graph chose PyTorch's argmax; a near-tie may pick
    either), and of the difference between the graph's total log-probability and PyTorch's for the same
    tokens."""
    from tst.transfer.captioning import banned_tokens

    graph = CaptionGreedy(decoder).eval()
    lengths = (torch.tensor(max_length), torch.tensor(0))
    _export_onnx(graph, (crosses[0], *lengths), path, GREEDY_INPUTS, GREEDY_OUTPUTS)
    session, worst = _session(path, threads=1), 0.0
    for cross in crosses:
        for min_length in (0, max_length):
            tokens, total, _ = OnnxCaptionDecoder(session, decoder, 1, greedy=True).greedy(cross, max_length, min_length)
            self_cache, expected_total = decoder.empty_self_cache(1), 0.0
            for position in range(tokens.shape[1] - 1):
                logits, self_cache = decoder.step(tokens[:, position], torch.tensor(position), self_cache, cross)
                banned = banned_tokens(logits.shape[-1], position + 1 < min_length)
                allowed = logits[0].log_softmax(-1).masked_fill(banned, -math.inf)
                chosen = float(allowed[tokens[0, position + 1]])
                worst = max(worst, float(allowed.max()) - chosen)
                expected_total += chosen
            worst = max(worst, abs(expected_total - float(total[0])))
    return worst


def _check_int8(folder: Path, frames: list[torch.Tensor], expected_outputs: list[dict[str, np.ndarray]]) -> dict:
    """Quantize folder/dense.onnx to folder/INT8_GRAPH and score it against PyTorch's outputs on `frames`:
    per output, the largest absolute difference over the frames as a share of the output's largest finite
    magnitude, and the share of segmentation pixels whose class agrees. The int8 graph is removed again when
    a share exceeds INT8_TOLERANCE; the record's "refused" then says why (else None)."""
    quantize_dense(folder / "dense.onnx", folder / INT8_GRAPH)
    session = _session(folder / INT8_GRAPH)
    relative: dict[str, float] = {}
    agreeing = pixels = 0
    for frame, expected in zip(frames, expected_outputs):
        actual = dict(zip(expected, session.run(list(expected), {"rgb": frame[None].float().numpy()})))
        for name, e in expected.items():
            finite = np.abs(e[np.isfinite(e)])
            scale = float(finite.max()) if finite.size else 0.0
            difference = _max_difference(e, actual[name])
            relative[name] = max(relative.get(name, 0.0), difference / scale if scale > 0 else difference)
        if "seg_logits_nhwc" in expected:
            same = expected["seg_logits_nhwc"].argmax(-1) == actual["seg_logits_nhwc"].argmax(-1)
            agreeing, pixels = agreeing + int(same.sum()), pixels + same.size
    worst = max(relative, key=relative.get)
    refused = None
    if relative[worst] > INT8_TOLERANCE:
        (folder / INT8_GRAPH).unlink()
        refused = (f"its '{worst}' differed from PyTorch's by {relative[worst]:.1%} of the output's range "
                   f"(> {INT8_TOLERANCE:.0%}) over {len(frames)} eval frames")
    return {"max_relative_difference": {name: round(v, 5) for name, v in relative.items()},
            "seg_agreement": round(agreeing / pixels, 5) if pixels else None, "refused": refused}
