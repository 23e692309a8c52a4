"""The Dockerfile and the systemd units, checked without a container engine or systemd
running (issue 16). `systemd-analyze verify` checks the units when it is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
UNITS = sorted((ROOT / "deploy").glob("*.service"))


def instructions() -> list[tuple[str, str]]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]
    return [(ln.split(None, 1)[0], ln.split(None, 1)[1]) for ln in lines]


def test_image_copies_every_package_the_wheel_needs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = {name.rstrip("*") for name in include}
    copied = {src for op, args in instructions() if op == "COPY" for src in args.split()[:-1]}
    assert packages <= copied, packages - copied
    assert {"pyproject.toml", "README.md"} <= copied  # the build reads both
    install = next(args for op, args in instructions() if op == "RUN" and "pip install" in args)
    assert "-e " not in install  # a real install: package data, no source tree needed


def test_image_runs_unprivileged_with_a_cache_it_owns() -> None:
    steps = instructions()
    user = [args for op, args in steps if op == "USER"]
    assert user == ["corral"]
    useradd = next(args for op, args in steps if op == "RUN" and "useradd" in args)
    assert "--uid 10001" in useradd and "chown -R corral:corral /models" in useradd
    order = [op for op, _ in steps]
    assert order.index("USER") > max(i for i, (op, a) in enumerate(steps) if "pip install" in a)
    assert ("VOLUME", '["/models"]') in steps
    env = " ".join(args for op, args in steps if op == "ENV")
    assert "HF_HOME=/models/hf" in env and "CORRAL_CACHE_DIR=/models/corral" in env


def test_dockerignore_keeps_secrets_and_venvs_out() -> None:
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".env", ".venv", ".git"} <= set(ignored)


def unit(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values.setdefault(key, value)
    return values


@pytest.mark.parametrize("path", UNITS, ids=[p.name for p in UNITS])
def test_units_stop_with_sigterm_and_time_to_finish(path: Path) -> None:
    values = unit(path)
    assert values["User"] == "corral" and values["KillSignal"] == "SIGTERM"
    assert values["ExecStart"].startswith("/opt/corral/.venv/bin/corral ")
    assert values["EnvironmentFile"] == "/etc/corral/corral.env"
    if "worker" in values["ExecStart"] or values["ExecStart"].endswith(" run"):
        grace = Settings.model_fields["shutdown_grace"].default
        assert int(values["TimeoutStopSec"]) >= grace + 30


def test_the_stack_unit_runs_corral_run_and_signals_it_alone() -> None:
    values = unit(ROOT / "deploy" / "corral.service")
    assert values["ExecStart"] == "/opt/corral/.venv/bin/corral run"
    assert values["KillMode"] == "mixed"  # `corral run` stops its children in order
    assert values["Environment"] == "CORRAL_API=1"  # no terminal to chat in


def test_systemd_accepts_the_units(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze is not installed")
    corral = Path(sys.executable).with_name("corral")
    for path in UNITS:
        # The install location is rewritten to this environment's corral, which exists.
        text = path.read_text().replace("/opt/corral/.venv/bin/corral", str(corral))
        (tmp_path / path.name).write_text(text)
    names = [str(tmp_path / p.name.replace("@.", "@0.")) for p in UNITS]
    for path in UNITS:
        if "@" in path.name:
            (tmp_path / path.name.replace("@.", "@0.")).symlink_to(tmp_path / path.name)
    result = subprocess.run([analyze, "verify", *names], capture_output=True, text=True, timeout=60)
    problems = [ln for ln in result.stderr.splitlines() if "corral" in ln]
    assert result.returncode == 0 and not problems, result.stderr
