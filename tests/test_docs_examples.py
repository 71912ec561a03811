"""Every ```python block of README.md and docs/ runs as written (each in a fresh namespace)."""

import pathlib
import re

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks():
    for page in PAGES:
        for i, code in enumerate(BLOCK.findall(page.read_text())):
            yield pytest.param(code, id=f"{page.relative_to(ROOT)}#{i}")


EXAMPLES = list(_blocks())


def test_the_pages_have_examples():
    ids = {p.id.split("#")[0] for p in EXAMPLES}
    assert {"README.md", "docs/gradmix_in_your_model.md"} <= ids


@pytest.mark.parametrize("code", EXAMPLES)
def test_example_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<example>", "exec"), {"__name__": "__example__"})
