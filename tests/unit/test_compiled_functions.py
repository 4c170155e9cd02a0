"""The fast path's compiled functions and their wrappers (fastpath.jit): a function compiled
`internal` has no CPython wrapper, so no Python code may call it. Python's calls are found by
reading the sources (every name and attribute used outside a compiled function's body), as a
call from an untested path would only fail when it runs."""
import ast
import importlib
import pkgutil
from pathlib import Path

import pytest
from numba.core.registry import CPUDispatcher

import fastpath
from fastpath.jit import internal
from vrouter.node.compiling import _fastpath_dispatchers

ROOT = Path(__file__).resolve().parents[2]
PYTHON_SOURCES = ("vrouter", "fastpath", "tests", "benchmarks")
DECORATORS = {"compiled", "internal", "inlined", "releasing_gil", "njit", "jit"}


def _decorator_name(node: ast.expr) -> str:
    node = node.func if isinstance(node, ast.Call) else node
    return node.attr if isinstance(node, ast.Attribute) else getattr(node, "id", "")


def _is_compiled(function: ast.AST) -> bool:
    return isinstance(function, ast.FunctionDef) and any(
        _decorator_name(d) in DECORATORS for d in function.decorator_list)


def python_uses(tree: ast.AST):
    """(name, line) of every name and attribute that Python code in `tree` uses: not inside a
    compiled function's body (numba calls those without a wrapper), not in an import."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        if _is_compiled(node):
            todo += node.decorator_list
            continue
        if isinstance(node, ast.Name):
            yield node.id, node.lineno
        elif isinstance(node, ast.Attribute):
            yield node.attr, node.lineno
        todo += ast.iter_child_nodes(node)


def python_uses_by_name() -> dict[str, list[str]]:
    """name -> ["path:line", ...] over every Python source of the project."""
    uses: dict[str, list[str]] = {}
    for top in PYTHON_SOURCES:
        for path in sorted((ROOT / top).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for name, line in python_uses(tree):
                uses.setdefault(name, []).append(f"{path.relative_to(ROOT)}:{line}")
    return uses


def fastpath_dispatchers() -> dict[str, CPUDispatcher]:
    """Every compiled function of the fastpath package (all its modules imported first), by
    module-qualified name."""
    for module in pkgutil.walk_packages(fastpath.__path__, "fastpath."):
        importlib.import_module(module.name)
    return {f"{d.py_func.__module__}.{d.py_func.__name__}": d for d in _fastpath_dispatchers()}


def _has_no_python_wrapper(dispatcher: CPUDispatcher) -> bool:
    return bool(dispatcher.targetoptions.get("no_cpython_wrapper"))


def test_no_python_code_uses_a_function_compiled_without_a_python_wrapper():
    dispatchers = fastpath_dispatchers()
    internal_names = {q.rsplit(".", 1)[1] for q, d in dispatchers.items()
                      if _has_no_python_wrapper(d)}
    uses = python_uses_by_name()
    called_from_python = {q.rsplit(".", 1)[1] for q in dispatchers} & set(uses)
    if not internal_names or not called_from_python:
        pytest.fail(f"the scan found {len(internal_names)} internal functions and "
                    f"{len(called_from_python)} used from Python: it reads nothing")
    misused = {name: uses[name][:3] for name in sorted(internal_names & set(uses))}
    assert misused == {}, "decorate these @compiled (fastpath.jit), Python uses them"


def test_every_compiled_function_is_built_without_a_c_callback_wrapper():
    """No fast path function is handed to C as a function pointer: numba's cfunc wrapper for
    each would only cost compile time."""
    dispatchers = fastpath_dispatchers()
    assert len(dispatchers) > 50
    assert [q for q, d in dispatchers.items() if not d.targetoptions.get("no_cfunc_wrapper")] \
        == []


def test_a_python_call_of_an_internal_function_is_refused_with_a_clear_error():
    """numba would jump to the wrapper that is not there and crash the process."""
    @internal
    def plus_one(x):
        return x + 1
    with pytest.raises(TypeError, match="plus_one.*without a Python wrapper"):
        plus_one(1)


def test_the_scan_sees_python_uses_and_skips_compiled_bodies():
    tree = ast.parse("@internal\ndef f(x):\n    return g(x)\n\ndef h():\n    return f(1)\n")
    names = {name for name, _ in python_uses(tree)}
    assert "f" in names and "internal" in names and "g" not in names
