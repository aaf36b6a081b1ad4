"""The package's shape: every module imports, no module imports one that imports it back, and
the ideas that once had several copies (progress bars, atomic writes, defaults) have one owner."""
import ast
import importlib
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "netdissect"


def _modules():
    """{dotted name: (path, is_package)} of every module of the package."""
    mods = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        mods[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    return mods


def import_graph():
    """Module -> the package modules it imports anywhere in its body (function-level imports
    included). A subpackage's __init__ counts like any module (runs/ re-exports its modules);
    the top package's is left out: its re-exports are lazy (imported on first use)."""
    mods = _modules()
    graph = {}
    for name, (path, is_package) in mods.items():
        package = name if is_package else name.rsplit(".", 1)[0]
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")[:len(package.split(".")) - (node.level - 1)]
                    base = ".".join(parts + ([node.module] if node.module else []))
                # `from pkg import module` depends on that module; `from pkg import name` on pkg
                candidates = [f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names]
            elif isinstance(node, ast.Import):
                candidates = [a.name for a in node.names]
            else:
                continue
            targets |= {c for c in candidates if c in mods and c != name and c != "netdissect"}
        graph[name] = targets
    return graph


def find_cycle(graph):
    """One import circle as a list of modules, or None."""
    state = {}
    stack = []

    def visit(v):
        state[v] = 1
        stack.append(v)
        for w in sorted(graph[v]):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state:
                found = visit(w)
                if found:
                    return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state:
            found = visit(v)
            if found:
                return found
    return None


def test_cycle_finder_finds_a_circle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_graph_sees_function_level_imports():
    graph = import_graph()
    assert "netdissect.results" in graph["netdissect.runs.files"]  # imported inside load_layer
    assert "netdissect.runs" in graph["netdissect.formulas.rundir"]


def test_no_module_imports_one_that_imports_it_back():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import circle: " + " -> ".join(cycle)


@pytest.mark.parametrize("name", sorted(n for n in _modules() if not n.endswith("__main__")))
def test_every_module_imports(name):
    importlib.import_module(name)


def _sources():
    return {p.relative_to(PACKAGE).as_posix(): p.read_text(encoding="utf-8") for p in PACKAGE.rglob("*.py")}


def test_one_progress_helper():
    users = sorted(name for name, text in _sources().items() if re.search(r"^\s*(from|import) tqdm", text, re.M))
    assert users == ["progress.py"]


def test_defaults_defined_once():
    """The IoU threshold and the quantile are given a literal default only in config.py."""
    for pattern in (r"=\s*0\.04(?!\d)", r"quantile[^\n]*=\s*0\.005(?!\d)"):
        places = sorted(name for name, text in _sources().items() if re.search(pattern, text))
        assert places == ["config.py"], (pattern, places)


def test_one_atomic_file_writer():
    """Files are replaced only through atomic.py; the other renames move whole directories
    (a dataset or a report staged beside its target)."""
    pattern = re.compile(r"tmp\w*\s*=\s*\w+\.with_name\(")
    assert sorted(name for name, text in _sources().items() if pattern.search(text)) == ["atomic.py"]


def test_cli_silences_only_the_warnings_it_reprints(monkeypatch):
    """`cli.main` hides the dissection's own warnings (printed with the summary) and lets any
    other warning through."""
    import argparse
    import warnings

    from netdissect.cli import commands as cli
    from netdissect.errors import DissectionWarning

    def command(args):
        warnings.warn("recorded in the summary", DissectionWarning)
        warnings.warn("from a library", UserWarning)
        return 0

    parser = argparse.ArgumentParser()
    parser.set_defaults(func=command)
    monkeypatch.setattr(cli, "build_parser", lambda: parser)
    monkeypatch.setattr(cli, "validate_args", lambda args, parser: None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cli.main([]) == 0
    assert [str(w.message) for w in caught] == ["from a library"]


def test_every_device_option_defaults_to_auto():
    from netdissect.cli.commands import build_parser

    def walk(parser):
        for action in parser._actions:
            if "--device" in action.option_strings:
                yield parser.prog, action.default
            for sub in getattr(action, "choices", None) or {}:
                if isinstance(action.choices, dict):
                    yield from walk(action.choices[sub])

    found = dict(walk(build_parser()))
    assert "netdissect explain" in found
    assert {prog: d for prog, d in found.items() if d != "auto"} == {}


def test_one_layer_folder_rule():
    from netdissect.runs import layer_dirnames, safe_name
    assert safe_name("blocks.é") == "blocks._"          # [A-Za-z0-9._-] only, as docs/design.md says
    assert safe_name("features.0/conv") == "features.0_conv"
    assert safe_name("..") == "_"
    assert layer_dirnames(["a b", "a_b", "report", "A_B", "layer1"]) == {
        "a b": "a_b", "a_b": "a_b-2", "report": "report-2", "A_B": "A_B-3", "layer1": "layer1"}


def test_atomic_path_keeps_the_old_file_when_the_write_fails(tmp_path):
    from netdissect.atomic import atomic_path, atomic_write_bytes
    from netdissect.errors import WriteError
    target = tmp_path / "result.json"
    atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("killed mid-write")
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]
    with pytest.raises(WriteError, match="result.json"):      # the write's own error, naming the target
        with atomic_path(target) as tmp:
            raise OSError(28, "No space left on device", str(tmp))
    with pytest.raises(FileNotFoundError):                    # a missing source stays what it is
        with atomic_path(target) as tmp:
            (tmp_path / "missing").read_bytes()
    assert target.read_bytes() == b"old" and sorted(tmp_path.iterdir()) == [target]


def test_the_top_level_holds_only_what_every_part_shares():
    """Each part of the method has its folder (docs/design.md); the top level keeps the few
    modules all of them use, so a new module has to be placed in a part."""
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert top == ["__init__", "__main__", "atomic", "config", "errors", "progress", "results"]
    parts = sorted(p.name for p in PACKAGE.iterdir() if (p / "__init__.py").exists())
    assert parts == ["cli", "data", "engine", "experiments", "formulas", "models", "report", "runs", "stats",
                     "tally"]
