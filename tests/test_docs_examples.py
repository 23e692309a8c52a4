"""The example configs in the README and docs/team.md are valid, so the docs cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shared.team_config import parse_config

ROOT = Path(__file__).resolve().parents[1]


def yaml_blocks(path: Path) -> list[str]:
    return [
        b for b in re.findall(r"```yaml\n(.*?)```", path.read_text(), re.S) if "permissions:" in b
    ]


@pytest.mark.parametrize("doc", ["README.md", "docs/team.md"])
def test_example_team_configs_validate(doc: str) -> None:
    blocks = yaml_blocks(ROOT / doc)
    assert blocks, f"{doc} has no example config"
    for block in blocks:
        config = parse_config(block, name=doc)
        assert config.permissions.admins
