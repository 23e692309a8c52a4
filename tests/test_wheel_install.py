"""The built wheel carries everything: installed outside the checkout, `corral api` serves
the web page and `corral worker` registers (issue 16: the page's files were left out).

The wheel is built from a copy of the sources (as the Dockerfile copies them) and
installed into a fresh virtualenv in a temporary directory; its dependencies come from
this environment through a path entry, so nothing is downloaded. PYTHONPATH is cleared
so the checkout cannot stand in for the installed package.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis
from rq import Worker

from corral.redis_server import free_port
from shared.settings import load_settings
from worker.model_source import materialize_embedded

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "shared", "bots", "worker", "corral"]  # = Dockerfile


class Installed:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.bin = root / "venv" / "bin"
        self.wheel: Path | None = None

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("CORRAL_", "REDIS_URL"))}
        env.pop("PYTHONPATH", None)
        env.update(extra)
        return env

    def run(self, *args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin / "corral"), *args],
            env=self.env(**extra), cwd=self.root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("wheel")
    assert not root.resolve().is_relative_to(ROOT)
    source = root / "src"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root / "dist"), str(source)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    found = Installed(root)
    [found.wheel] = (root / "dist").glob("corral-*.whl")
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(root / "venv")], check=True, timeout=120
    )
    venv_python = str(found.bin / "python")
    subprocess.run(
        [*pip, "--python", venv_python, "install", "--no-deps", "--no-index", str(found.wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    # The dependencies (aiohttp, rq, torch, transformers, the embedded model) from this
    # environment, after the venv's own packages.
    purelib = subprocess.run(
        [venv_python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    Path(purelib, "zz-deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return found


def test_wheel_carries_the_web_page_and_example_configs(installed: Installed) -> None:
    assert installed.wheel is not None
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    for web in ("index.html", "app.js", "markdown.js", "style.css"):
        assert f"bots/api/web/{web}" in names
    assert {"corral/examples/corral.yaml", "corral/examples/env.example"} <= names
    assert not any(n.startswith("tests/") for n in names)


def test_installed_package_is_the_wheel_not_the_checkout(installed: Installed) -> None:
    where = subprocess.run(
        [str(installed.bin / "python"), "-c", "import corral, bots.api; print(corral.__file__)"],
        env=installed.env(), cwd=installed.root, capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    assert Path(where).is_relative_to(installed.root / "venv"), where
    example = installed.run("config", "example")
    assert example.returncode == 0 and "permissions:" in example.stdout
    assert installed.run("config", "env").stdout == (ROOT / ".env.example").read_text()


@pytest.fixture
def api_process(installed: Installed, redis_url: str) -> Iterator[str]:
    port = free_port()
    log = (installed.root / "api.log").open("wb")
    process = subprocess.Popen(
        [str(installed.bin / "corral"), "api"],
        env=installed.env(REDIS_URL=redis_url, CORRAL_API_PORT=str(port)),
        cwd=installed.root, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=2).close()
            break
        except OSError:
            text = (installed.root / "api.log").read_text(errors="replace")[-2000:]
            assert process.poll() is None and time.monotonic() < deadline, text
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(timeout=30)


def fetch(url: str) -> tuple[int, str]:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.status, response.read().decode()


def test_installed_api_serves_the_page_and_health(api_process: str) -> None:
    status, page = fetch(f"{api_process}/")
    assert status == 200 and '<h1 id="product">corral</h1>' in page
    status, script = fetch(f"{api_process}/static/app.js")
    assert status == 200 and "checkHealth" in script
    status, body = fetch(f"{api_process}/healthz")
    assert status == 200 and json.loads(body)["redis"] is True


@pytest.mark.model
def test_installed_worker_registers_and_api_sees_it(
    installed: Installed, api_process: str, redis_url: str, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    # The converted embedded model, reused (converting it again would take a minute).
    (cache / "models").symlink_to(materialize_embedded(load_settings().cache_dir).parent)
    log_path = tmp_path / "worker.log"
    process = subprocess.Popen(
        [str(installed.bin / "corral"), "worker"],
        env=installed.env(
            REDIS_URL=redis_url, CORRAL_CACHE_DIR=str(cache), CORRAL_SLOTS="2",
            CORRAL_KV_CACHE_TOKENS="2048",
        ),
        cwd=installed.root, stdout=log_path.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    conn = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + 240
        while not Worker.all(connection=conn):
            assert process.poll() is None and time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.3)
        body = json.loads(fetch(f"{api_process}/healthz")[1])
        assert (body["workers"], body["slots"]) == (1, 2)
    finally:
        process.terminate()
        assert process.wait(timeout=60) == 0, log_path.read_text()[-2000:]
        conn.close()
