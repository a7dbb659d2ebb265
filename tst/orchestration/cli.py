"""The `tst` command: one subcommand per stage, each taking Hydra overrides (key=value, group=option)."""

from __future__ import annotations

import errno
import os
import sys
from dataclasses import dataclass
from typing import Callable

from tst.errors import TSTError
from tst.quiet import quiet_libraries


@dataclass(frozen=True)
class Subcommand:
    summary: str
    usage: str
    run: Callable[[list[str]], int]
    config: str | None = None  # the stage config `--help` describes


def _load(stage: str, overrides: list[str]):
    """The composed, validated config of one command, once its output locations are known writable
    (so an unwritable workspace or `out=` is refused before the work, not after it)."""
    from tst.config import load
    from tst.workspace import check_outputs

    cfg = load(stage, overrides)
    if stage == "run":
        from tst.orchestration.pipeline import check_presets

        check_presets(cfg)
    check_outputs(cfg, stage)
    return cfg


def _sweep(stage: str, args: list[str]):
    """Configs to run: one, or with -m/--multirun one per combination of comma-separated sweep values
    (`tst collect -m space.seed=0,1,2`), run one after another. All are composed (and so checked)
    before the first runs, so a bad value anywhere in a sweep stops it before anything is written."""
    from tst.config import expand_sweeps

    multirun = any(a in ("-m", "--multirun") for a in args)
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    yield from [_load(stage, combination) for combination in (expand_sweeps(overrides) if multirun else [overrides])]


def _spaces(args: list[str]) -> int:
    from tst.envs.commands import list_spaces, render_space

    action, overrides = (args[0], args[1:]) if args else ("", [])
    if action == "list":
        list_spaces()
    elif action == "render":
        render_space(_load("spaces", overrides))
    else:
        raise TSTError(f"tst spaces: unknown action '{action}': expected 'list' or 'render'")
    return 0


def _each_config(stage: str, load_runner: Callable[[], Callable]) -> Callable[[list[str]], int]:
    """A subcommand that runs its stage once per (swept) config; the runner is imported on use."""

    def command(args: list[str]) -> int:
        run = load_runner()
        for cfg in _sweep(stage, args):
            run(cfg)
        return 0

    return command


def _collect_runner() -> Callable:
    from tst.collect.run import run

    return run


def _transfer(args: list[str]) -> int:
    from tst.transfer.probe import probe
    from tst.transfer.run import run

    action = probe if args and args[0] == "probe" else run
    for cfg in _sweep("transfer", args[1:] if action is probe else args):
        action(cfg)
    return 0


def _pipeline_runner() -> Callable:
    from tst.orchestration.pipeline import run

    return run


def _report_runner() -> Callable:
    from tst.transfer.report import report

    return report


def _deploy(args: list[str]) -> int:
    from tst.deploy.run import deploy, export_command

    action = export_command if args and args[0] == "export" else deploy
    for cfg in _sweep("deploy", args[1:] if action is export_command else args):
        action(cfg)
    return 0


def _pretrain(args: list[str]) -> int:
    from tst.pretrain.predict import predict
    from tst.pretrain.run import run
    from tst.pretrain.tokenizer_training import tokens, train_tokenizers

    actions = {"tokenizers": train_tokenizers, "tokens": tokens, "predict": predict}
    if args and args[0] in actions:
        for cfg in _sweep("pretrain", args[1:]):
            actions[args[0]](cfg)
        return 0
    if args and "=" not in args[0] and not args[0].startswith("-"):
        raise TSTError(f"tst pretrain: unknown action '{args[0]}': expected tokenizers, tokens, predict or overrides")
    overrides = [a for a in args if a not in ("-m", "--multirun")]
    for cfg in _sweep("pretrain", args):
        run(cfg, overrides)
    return 0


def _bench(args: list[str]) -> int:
    from tst.collect.bench import bench_collect
    from tst.deploy.bench import bench_deploy
    from tst.envs.bench import bench_render
    from tst.pretrain.bench import bench_pretrain
    from tst.transfer.bench import bench_transfer
    from tst.orchestration.device_check import bench_gpu

    benchmarks = {"render": bench_render, "collect": bench_collect, "pretrain": bench_pretrain,
                  "transfer": bench_transfer, "deploy": bench_deploy, "gpu": bench_gpu}
    action, overrides = (args[0], args[1:]) if args else ("", [])
    if action not in benchmarks:
        raise TSTError(f"tst bench: unknown benchmark '{action}': expected one of: {', '.join(benchmarks)}")
    benchmarks[action](_load("bench", overrides))
    return 0


SUBCOMMANDS: dict[str, Subcommand] = {
    "collect": Subcommand("render a TST dataset (pretrain / eval / transfer splits) from a space",
                          "tst collect [-m] [overrides]", _each_config("collect", _collect_runner), "collect"),
    "pretrain": Subcommand("multimodal masked pretraining on the test space",
                           "tst pretrain [tokenizers | tokens | predict] [overrides]", _pretrain, "pretrain"),
    "transfer": Subcommand("train segmentation / detection / captioning heads on the transfer split, score them on eval",
                           "tst transfer [probe] [-m] [overrides]", _transfer, "transfer"),
    "deploy": Subcommand("run the specialist in the agent's perception loop; `export`: .pt2 and ONNX graphs",
                         "tst deploy [export] [overrides]", _deploy, "deploy"),
    "run": Subcommand("the whole pipeline: collect, pretrain, transfer, deploy, report (resumable)",
                      "tst run [experiment=default|smoke|paper] [-m] [overrides]", _each_config("run", _pipeline_runner),
                      "run"),
    "report": Subcommand("the results table, charts and qualitative pictures from the finished transfer runs",
                         "tst report [overrides]", _each_config("report", _report_runner), "report"),
    "bench": Subcommand("benchmarks with JSON output", "tst bench render|collect|pretrain|transfer|deploy|gpu [overrides]", _bench, "bench"),
    "spaces": Subcommand("list spaces and render previews", "tst spaces list | tst spaces render [overrides]",
                         _spaces, "spaces"),
}


def _overview() -> str:
    lines = ["usage: tst <command> [key=value ...]   (Hydra overrides; `tst <command> --help` for its keys)", ""]
    for name, sub in SUBCOMMANDS.items():
        lines.append(f"  {name:<9} {sub.summary}")
    return "\n".join(lines)


# Failures of the machine or the folders a user pointed TST at, not of TST: one line each, like a bad
# setting. Any other exception is a bug and keeps its traceback (as does everything with TST_DEBUG=1).
ENVIRONMENT_ERRORS = {errno.EACCES: "expected a folder this user may write to",
                      errno.EPERM: "expected a folder this user may write to",
                      errno.EROFS: "expected a writable file system",
                      errno.ENOSPC: "the disk is full; free space and run the command again (it resumes)",
                      errno.EDQUOT: "the disk quota is used up; free space and run the command again (it resumes)",
                      errno.ENOTDIR: "a file stands where a folder is expected",
                      errno.EEXIST: "a file stands where a folder is expected"}


def environment_error(error: OSError) -> str:
    """One line for an OSError a user can fix: the path, the system's words, what was expected."""
    where = error.filename if error.filename is not None else "a file"
    return f"{where}: {error.strerror.lower() if error.strerror else error}; {ENVIRONMENT_ERRORS[error.errno]}"


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    if not args or args[0] in ("-h", "--help", "help"):
        print(_overview())
        return 0
    name, rest = args[0], args[1:]
    try:
        if name not in SUBCOMMANDS:
            raise TSTError(f"unknown command '{name}': expected one of {', '.join(SUBCOMMANDS)}")
        sub = SUBCOMMANDS[name]
        if "-h" in rest or "--help" in rest:
            from tst.config import describe

            print(f"usage: {sub.usage}\n\n{sub.summary}\n\n{describe(sub.config)}")
            return 0
        return sub.run(rest)
    except TSTError as error:
        if os.environ.get("TST_DEBUG") == "1":
            raise
        print(f"tst {name}: error: {error}", file=sys.stderr)
        return 2
    except OSError as error:
        if error.errno not in ENVIRONMENT_ERRORS or os.environ.get("TST_DEBUG") == "1":
            raise
        print(f"tst {name}: error: {environment_error(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"tst {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
