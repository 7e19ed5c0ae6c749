"""Documentation coverage: every hook and each of its arguments appears in docs/hooks.md."""

import inspect
from pathlib import Path

from loqi_core import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"


def test_every_hook_and_argument_is_documented():
    text = DOCS.read_text()
    hooks = [(n, f) for n, f in vars(hookspecs).items() if n.startswith("loqi_") and callable(f)]
    assert len(hooks) == 6
    for name, fn in hooks:
        args = list(inspect.signature(fn).parameters)
        heading = f"## `{name}({', '.join(args)})`"
        assert heading in text, f"docs/hooks.md lacks the heading {heading}"
        section = text.split(heading, 1)[1].split("\n## ", 1)[0]
        for arg in args:
            assert f"`{arg}`" in section, f"argument {arg} of {name} is undocumented"
        assert fn.__doc__, f"{name} has no docstring"
