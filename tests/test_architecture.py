"""docs/architecture.md names files and functions: each must exist. And the
registries of commands and outputs match the modules that implement them."""
import argparse
import ast
import importlib
import re
from pathlib import Path

from telegraf_tcpdrop.cli import build_parsers
from telegraf_tcpdrop.outputs import OUTPUTS

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = ROOT / "plugin"
DOC = (ROOT / "docs" / "architecture.md").read_text()
REFERENCE = re.compile(r"`((?:plugin|tests|docs)/[\w/.-]+\.(?:py|c|h|md))(?::([\w.]+))?`")


def python_names(path):
    """Module-level functions and classes, and Class.method, of a Python file."""
    names = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        if isinstance(node, ast.ClassDef):
            names |= {f"{node.name}.{item.name}" for item in node.body
                      if isinstance(item, ast.FunctionDef)}
    return names


def c_defines(text, name):
    """Whether C source defines name: a function (at the start of a line), a
    BPF program, a map, or a struct."""
    return any(re.search(pattern, text, re.M) for pattern in (
        rf"^\w[^;=\n]*\b{name}\(",          # static __always_inline bool name(
        rf"^\w.*BPF_(?:PROG|KPROBE)\({name},",
        rf"^}}.*\b{name} SEC\(",            # } drops_a SEC(".maps")
        rf"^struct {name} {{"))


def test_every_file_and_function_the_architecture_names_exists():
    references = REFERENCE.findall(DOC)
    assert len(references) > 40  # the doc is the path of a drop, not a summary
    missing = []
    for path, name in references:
        file = ROOT / path
        if not file.is_file():
            missing.append(path)
        elif name and file.suffix == ".py" and name not in python_names(file):
            missing.append(f"{path}:{name}")
        elif name and file.suffix in (".c", ".h") and not c_defines(file.read_text(), name):
            missing.append(f"{path}:{name}")
    assert missing == []


def test_the_checker_finds_what_is_not_there():
    assert "Probe.take_counts" in python_names(PLUGIN / "probe.py")
    assert "Probe.give_counts" not in python_names(PLUGIN / "probe.py")
    source = (PLUGIN / "tcpdrop.c").read_text()
    assert all(c_defines(source, name) for name in ("count_drop", "kfree_skb_btf", "drops_a"))
    assert not c_defines(source, "count_dropped")
    assert not c_defines(source, "bpf_map_lookup_elem")  # called, not defined here


def test_each_command_is_a_module_with_run_and_each_module_with_run_a_command():
    parser, _ = build_parsers()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    with_run = {path.stem for path in PLUGIN.glob("*.py") if "run" in python_names(path)}
    assert with_run == set(commands) == {"trace", "metrics", "top", "audit", "reasons", "check"}


def test_each_output_is_a_module_of_its_own_with_the_four_calls():
    parser, _ = build_parsers()
    metrics = parser._subparsers._group_actions[0].choices["metrics"]
    output = next(a for a in metrics._actions if a.dest == "output")
    assert set(output.choices) == set(OUTPUTS)
    for module, name in OUTPUTS.values():
        output_class = getattr(importlib.import_module(f"telegraf_tcpdrop.{module}"), name)
        assert all(callable(getattr(output_class, call, None))
                   for call in ("from_args", "write", "health", "close")), name
    assert {module for module, _ in OUTPUTS.values()} == {path.stem for path in PLUGIN.glob("*_output.py")}
