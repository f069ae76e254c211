"""Every example manifest the README, the walkthrough and the demo apply parses and validates."""

from __future__ import annotations

from pathlib import Path

import pytest

from tendril.lab.manifest import parse_documents

EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "examples").glob("*.yaml"))


def test_there_are_examples() -> None:
    assert {p.name for p in EXAMPLES} >= {"demo.yaml", "service.yaml", "shop.yaml", "shop-l7.yaml", "l7.yaml"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_validates(path: Path) -> None:
    docs = parse_documents(path.read_text(), str(path))
    assert docs, path
