"""The structure the README states: the library in srdensenet/, imports running one way, thin scripts at the top,
no sys.path edits, and files and functions small enough to read."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "srdensenet"
SCRIPTS = ("train.py", "validate.py", "prepare_dataset.py", "inference.py", "export_onnx.py", "hubconf.py")
# The README's layers, bottom up ("Design"); a module may import its own layer or the ones below it.
FOUNDATIONS = {"choices", "model", "config", "hardware", "precision_probe", "imgproc", "image_files", "image_header",
               "metrics", "checkpoint", "fileio", "folder_lock", "provenance", "released", "limits", "weights_checks"}
COMMANDS = {"cli", "__main__"}


def package_modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def project_files() -> list[Path]:
    folders = [PACKAGE, ROOT / "scripts", ROOT / "benchmarks", ROOT / "tests"]
    return sorted(ROOT.glob("*.py")) + [p for folder in folders for p in folder.rglob("*.py")]


def imported_modules(path: Path) -> set[str]:
    """The package modules a file imports ("model", "cli", ...), and external names as they are written."""
    tree = ast.parse(path.read_text())
    here = path.relative_to(PACKAGE).parts[:-1] if path.is_relative_to(PACKAGE) else ()
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the file's folder in the package
                base = list(here[: len(here) - node.level + 1])
                target = ".".join(["srdensenet", *base, *([node.module] if node.module else [])])
            else:
                target = node.module
            names = [target] if node.module else [f"{target}.{alias.name}" for alias in node.names]
            found.update(names)
    return found


def layer(name: str) -> int:
    top = name.split(".")[1] if name.startswith("srdensenet.") else name
    return 2 if top in COMMANDS else 0 if top in FOUNDATIONS else 1


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_package_imports_run_downwards_and_never_reach_a_script(path):
    own = layer("srdensenet." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
    for name in imported_modules(path):
        assert name.split(".")[0] not in {s[:-3] for s in SCRIPTS}, f"{path.name} imports the script {name}"
        if name.startswith("srdensenet.") and name.count(".") >= 1:
            assert layer(name) <= own, f"{path.name} (layer {own}) imports {name} (layer {layer(name)})"


def test_top_level_scripts_are_thin_and_few():
    assert len(list(ROOT.glob("*.py"))) <= 8
    for name in SCRIPTS[:-1]:
        tree = ast.parse((ROOT / name).read_text())
        assert not [n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))], name
        assert imported_modules(ROOT / name) == {"srdensenet.cli"}, name
    assert len((ROOT / "hubconf.py").read_text().splitlines()) <= 40


def test_no_sys_path_edits():
    edits = [f"{p.relative_to(ROOT)}:{i}" for p in project_files()
             for i, line in enumerate(p.read_text().splitlines(), 1) if re.search(r"sys\.path\.(insert|append)", line)]
    assert not edits


@pytest.mark.parametrize("path", package_modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_and_functions_stay_short(path):
    source = path.read_text()
    assert len(source.splitlines()) <= 650
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            assert node.end_lineno - node.lineno + 1 <= 80, f"{path.name}: {node.name}"


def test_tests_share_helpers_through_conftest_and_helpers_and_use_public_names():
    """No test imports a sibling test module or a private name of the package (helpers.py and conftest.py are the
    shared places)."""
    found = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        tree = ast.parse(path.read_text())
        package_names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("srdensenet"):
                package_names.update(alias.asname or alias.name for alias in node.names)
                found += [f"{path.name}: {alias.name}" for alias in node.names if alias.name.startswith("_")]
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{path.name}: imports {m}" for m in modules if m.startswith("test_")]
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in package_names
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}:{node.lineno}: {node.value.id}.{node.attr}")
    assert not found


def test_readme_layout_table_names_every_package_module():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Layout"):readme.index("**Design.**")]
    missing = [p.name for p in (PACKAGE.glob("*.py")) if p.name not in ("__main__.py",) and f"`{p.name}`" not in table
               and f"`srdensenet/{p.name}`" not in table]
    assert not missing
