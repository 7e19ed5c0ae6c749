"""Documentation coverage: every hook and each of its arguments appears in docs/hooks.md; every name the package
exports and each of its arguments in docs/python-api.md."""

import inspect
from pathlib import Path

from loqi_core.hooks import hookspecs

DOCS = Path(__file__).resolve().parents[1] / "docs" / "hooks.md"
API_DOCS = DOCS.with_name("python-api.md")


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


def test_every_exported_function_and_argument_is_documented():
    import loqi_core

    text = API_DOCS.read_text()
    names = [n for n in loqi_core.__all__ if n != "__version__"]
    assert {"build_model", "load_dataset", "evaluate", "distill", "parse_degradation", "encode"} <= set(names)
    for name in names:
        assert f"`{name}(" in text, f"docs/python-api.md lacks {name}"
        for arg in inspect.signature(getattr(loqi_core, name)).parameters:
            assert f"`{arg}`" in text or f"{arg}=" in text, f"argument {arg} of {name} is undocumented in docs/python-api.md"


def test_readme_from_python_example_uses_the_exported_names():
    import ast

    import loqi_core

    readme = (DOCS.parents[1] / "README.md").read_text()
    section = readme.split("## From Python", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    imported = [a.name for node in ast.walk(ast.parse(code)) if isinstance(node, ast.ImportFrom) and node.module == "loqi_core"
                for a in node.names]  # fmt: skip
    assert {"build_model", "encode", "evaluate", "distill"} <= set(imported) <= set(loqi_core.__all__)


def _table_first_column(text: str, title: str) -> list[str]:
    """The first cells of the Markdown table that follows ``title``."""
    rows: list[str] = []
    for line in text.split(title, 1)[1].split("\n")[1:]:
        if line.startswith("|"):
            rows.append(line.split("|")[1])
        elif rows:
            break
    return rows[2:]  # past the header and its rule


def test_every_spec_field_is_documented_in_the_hook_reference():
    import dataclasses

    from loqi_core.hooks import specs

    text = DOCS.read_text()
    classes = [specs.EncoderSpec, specs.AggregatorSpec, specs.DegradationSpec, specs.LossSpec, specs.DatasetSpec,
               specs.WeightsSpec, specs.MethodProtocol, specs.Preprocess]  # fmt: skip
    for cls in classes:
        title = f"`{cls.__name__}` fields"
        assert title in text, f"docs/hooks.md has no table of {title}"
        documented = " ".join(_table_first_column(text, title))
        fields = [f.name for f in dataclasses.fields(cls)] if dataclasses.is_dataclass(cls) else list(cls.model_fields)
        for name in fields:
            assert f"`{name}`" in documented, f"{cls.__name__}.{name} is missing from its table in docs/hooks.md"


def test_every_kit_option_and_check_is_documented_in_the_plugin_guide():
    from loqi_core.testing import kit

    guide = (DOCS.parent / "plugin-guide.md").read_text()
    section = guide.split("## The conformance kit", 1)[1].split("\n## ", 1)[0]
    assert "`test_plugin_module_imports_no_heavy_library`" in section
    for cls in (kit.MethodTests, kit.AggregatorTests, kit.DegradationTests, kit.LossTests, kit.DatasetTests):
        title = f"### `{cls.__name__}`"
        assert title in section, f"the plugin guide's kit section has no {title}"
        part = section.split(title, 1)[1].split("\n### ", 1)[0]
        options = [n for n in vars(cls).get("__annotations__", {}) if not n.startswith("_")]
        checks = [n for n in dir(cls) if n.startswith("test_") and n != "test_plugin_module_imports_no_heavy_library"]
        assert options and checks
        for name in options + checks:
            assert f"| `{name}` |" in part, f"{cls.__name__}.{name} is missing from the plugin guide's kit section"
