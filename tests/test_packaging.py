"""The package installs as one `tst` with its stage folders and configs (regular, not editable, install)."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_regular_install_ships_subpackages_and_configs(tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(ROOT)], check=True, capture_output=True)
    for relative in ("tst/orchestration/cli.py", "tst/envs/raycast.py", "tst/envs/procedural/apartment.py", "tst/collect",
                     "tst/pretrain", "tst/transfer", "tst/deploy", "tst/configs/spaces.yaml",
                     "tst/configs/_workspace.yaml", "tst/configs/space/procedural.yaml"):
        assert (target / relative).exists(), relative
    for generic in ("envs", "collect", "deploy", "configs"):
        assert not (target / generic).exists(), f"installed a generic top-level '{generic}'"
    code = "import tst, tst.config; print(tst.__file__); print(tst.config.load('spaces', ['space.seed=4']).space.seed)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                            env={**os.environ, "PYTHONPATH": str(target)})
    assert result.returncode == 0, result.stderr
    assert str(target) in result.stdout and result.stdout.strip().endswith("4")


def test_ci_runs_the_readme_test_command_verbatim():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    command = next(line for line in ci if "pytest" in line)
    assert command.strip() in (ROOT / "README.md").read_text()
