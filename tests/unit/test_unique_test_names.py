"""pytest imports test modules by basename here (no packages below tests/): two files of one name abort the
whole collection, so every test file's name is unique across unit/, integration/ and e2e/."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def test_test_module_names_are_unique() -> None:
    names = Counter(path.name for path in TESTS.rglob("test_*.py"))
    assert [name for name, count in names.items() if count > 1] == []
