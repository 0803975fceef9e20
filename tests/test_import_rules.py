"""The package's import rules, read from the source with ``ast`` (nothing is imported):

- no import cycles among the package's modules, counting imports inside functions and the command modules that
  ``cli`` loads by name (a lazy import still ties the two modules together);
- no ``from X import _name`` of another module's private name;
- the library never imports the widgets or the command line (only the napari entry points may import widgets);
- the Qt-free modules never import Qt;
- the layers (docs/design.md): each subpackage imports only the layers below it (``LAYERS``): the model imports no
  file formats, the predictor and the data formats never import evaluation or training.
"""
from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

import pytest

PKG = "napari_ultratinysam"
PKG_DIR = Path(__file__).resolve().parents[1] / PKG

# Modules that napari (or the user's command line) loads as entry points: they may import widgets.
ENTRY_POINTS = {PKG, f"{PKG}.napari_reader", f"{PKG}.data.napari_reader"}
# The modules of widgets/ that are Qt views (a package's modules too: widgets/annotator/); every other module must be
# usable without Qt.
QT_VIEWS = {"annotator", "export_panel", "finetune_panel", "qt_parts", "workers"}
QT_NAMES = ("qtpy", "PyQt5", "PyQt6", "PySide2", "PySide6", "napari.qt", "superqt")


@dataclass
class Module:
    name: str
    path: Path
    is_package: bool
    imports: dict[str, int] = field(default_factory=dict)  # package module -> first line that imports it
    externals: dict[str, int] = field(default_factory=dict)  # outside module -> first line
    private: list[tuple[int, str, str]] = field(default_factory=list)  # (line, module, name)


def _module_name(path: Path, root: Path) -> tuple[str, bool]:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        return ".".join(parts[:-1]), True
    return ".".join(parts), False


def _resolve(mod: Module, level: int, target: str | None) -> str:
    if level == 0:
        return target or ""
    base = mod.name.split(".") if mod.is_package else mod.name.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([target] if target else []))


def scan(root: Path = PKG_DIR) -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for path in sorted(root.rglob("*.py")):
        name, is_pkg = _module_name(path, root)
        mods[name] = Module(name, path, is_pkg)
    for mod in mods.values():
        tree = ast.parse(mod.path.read_text(encoding="utf-8"), str(mod.path))

        def add(target: str, line: int, mod: Module = mod) -> None:
            if target == mod.name:
                return
            if target == PKG or target.startswith(PKG + "."):
                # `import a.b.c` of a name that is not a module (an attribute) counts as its module
                while target not in mods and "." in target:
                    target = target.rsplit(".", 1)[0]
                mod.imports.setdefault(target, line)
            else:
                mod.externals.setdefault(target, line)

        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for a in node.names:
                    add(a.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, node.level, node.module)
                for a in node.names:
                    sub = f"{base}.{a.name}"
                    if sub in mods:  # `from . import module`
                        add(sub, node.lineno)
                    else:
                        add(base, node.lineno)
                        if a.name.startswith("_") and not a.name.startswith("__") and base in mods:
                            mod.private.append((node.lineno, base, a.name))
            elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and "." in node.value
                  and node.value in mods):
                add(node.value, node.lineno)  # a submodule named in full: loaded by name (importlib)
    return mods


def find_cycles(mods: dict[str, Module]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as a list of modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in mods[v].imports:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(mods):
        if v not in index:
            visit(v)
    return out


def _is_under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_cli(name: str) -> bool:
    return _is_under(name, f"{PKG}.cli")


def _is_widget(name: str) -> bool:
    return _is_under(name, f"{PKG}.widgets")


def _is_qt_free(name: str) -> bool:
    """Everything but the Qt views (and the napari entry points that load them) is Qt-free, the annotation state
    and the other helpers inside widgets/ included."""
    if name in ENTRY_POINTS:
        return False
    parts = name.split(".")  # the name right under widgets: a Qt view's own modules are Qt views
    return not (_is_widget(name) and len(parts) > 2 and parts[2] in QT_VIEWS)


@pytest.fixture(scope="module")
def mods():
    return scan()


def test_the_scanner_sees_the_package(mods):
    assert f"{PKG}.inference.predictor" in mods and f"{PKG}.cli.main" in mods
    assert f"{PKG}.model.build" in mods[f"{PKG}.model.checkpoints"].imports
    assert f"{PKG}.cli.predict" in mods[f"{PKG}.cli.main"].imports  # loaded by name


def _where(mods, a: str, b: str) -> str:
    m = mods[a]
    return f"{m.path.relative_to(PKG_DIR.parent)}:{m.imports[b]} imports {b}"


def test_no_import_cycles(mods):
    msgs = []
    for comp in find_cycles(mods):
        inside = set(comp)
        edges = [_where(mods, a, b) for a in comp for b in mods[a].imports if b in inside]
        msgs.append("cycle among " + ", ".join(comp) + ":\n    " + "\n    ".join(edges))
    assert not msgs, "\n".join(msgs)


def test_no_private_names_across_modules(mods):
    bad = [f"{m.path.relative_to(PKG_DIR.parent)}:{line} imports {name} from {src}"
           for m in mods.values() for line, src, name in m.private if src != m.name]
    assert not bad, "\n".join(bad)


def test_library_never_imports_widgets_or_cli(mods):
    bad = []
    for m in mods.values():
        if m.name in ENTRY_POINTS:
            continue
        for target, line in m.imports.items():
            where = f"{m.path.relative_to(PKG_DIR.parent)}:{line} imports {target}"
            if _is_widget(target) and not _is_widget(m.name):
                bad.append(where)
            elif _is_cli(target) and not _is_cli(m.name):
                bad.append(where)
    assert not bad, "\n".join(bad)


# subpackage -> the subpackages it may import (besides itself and the root's private modules _version, _gui_safety)
LAYERS = {
    "core": set(),
    "model": {"core"},
    "inference": {"core", "model"},
    "data": {"core"},
    "evaluation": {"core", "data"},
    "training": {"core", "data", "model", "inference", "evaluation"},
    "compression": {"core", "data", "model", "inference", "evaluation", "training"},
    "annotation": {"core", "data", "model", "inference", "compression"},
}


def _layer(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_layers_import_only_the_layers_below(mods):
    assert set(LAYERS) <= {_layer(m) for m in mods}, "a layer named in LAYERS is missing from the package"
    bad = []
    for m in mods.values():
        allowed = LAYERS.get(_layer(m.name))
        if allowed is None:
            continue
        for target, line in m.imports.items():
            t = _layer(target)
            if t and t != _layer(m.name) and t not in allowed and t not in ("_version", "_gui_safety"):
                bad.append(f"{m.path.relative_to(PKG_DIR.parent)}:{line} imports {target} ({t} is not below "
                           f"{_layer(m.name)})")
    assert not bad, "\n".join(bad)


def test_qt_free_modules_never_import_qt(mods):
    bad = []
    for m in mods.values():
        if not _is_qt_free(m.name):
            continue
        for target, line in m.externals.items():
            if any(_is_under(target, q) for q in QT_NAMES):
                bad.append(f"{m.path.relative_to(PKG_DIR.parent)}:{line} imports {target}")
    assert not bad, "\n".join(bad)


# ------------------------------------------------------------------ the checker itself, on crafted packages


def _write(root: Path, files: dict[str, str]) -> Path:
    pkg = root / PKG
    for rel, text in files.items():
        p = pkg / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return pkg


def test_checker_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "from .b import f\n",
        "b.py": "def f():\n    from . import a\n",
        "c.py": "from . import a\n",
    })
    assert find_cycles(scan(pkg)) == [[f"{PKG}.a", f"{PKG}.b"]]


def test_checker_finds_a_cycle_through_a_module_loaded_by_name(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "cli.py": f"MODS = ['{PKG}.sub.commands']\n",
        "sub/__init__.py": "",
        "sub/commands.py": "from ..cli import CliError\n",
    })
    assert find_cycles(scan(pkg)) == [[f"{PKG}.cli", f"{PKG}.sub.commands"]]


def test_checker_finds_private_names_and_qt(tmp_path):
    pkg = _write(tmp_path, {
        "__init__.py": "",
        "a.py": "def _helper():\n    pass\n",
        "b.py": "from .a import _helper\nfrom qtpy.QtWidgets import QWidget\n",
        "widgets/__init__.py": "",
        "widgets/annotator.py": "from qtpy.QtWidgets import QWidget\n",
        "widgets/state.py": "from qtpy.QtWidgets import QWidget\n",
    })
    mods = scan(pkg)
    assert mods[f"{PKG}.b"].private == [(1, f"{PKG}.a", "_helper")]
    assert "qtpy.QtWidgets" in mods[f"{PKG}.b"].externals and _is_qt_free(f"{PKG}.b")
    assert not _is_qt_free(f"{PKG}.widgets.annotator") and _is_qt_free(f"{PKG}.widgets.state")
    assert not _is_qt_free(f"{PKG}.widgets.annotator.layers")
