"""The trainer's layout holds: every module sits in a role sub-package that says what it may
import, unit tests mirror those sub-packages, and no test reaches for a private name of another
sub-package. (Which layer may import which is import-linter's job, in `make lint`.)"""

import ast
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import trainer

ROOT = Path(__file__).resolve().parents[3]
TRAINER = ROOT / "trainer"
SUBPACKAGES = sorted(p.name for p in TRAINER.iterdir() if (p / "__init__.py").is_file())


def test_every_module_lives_in_a_subpackage_that_names_what_it_may_import():
    assert sorted(p.name for p in TRAINER.glob("*.py")) == ["__init__.py", "__main__.py"]
    assert set(SUBPACKAGES) == {"common", "data", "model", "learning", "packaging", "ops", "loop"}
    for name in SUBPACKAGES:
        doc = ast.get_docstring(ast.parse((TRAINER / name / "__init__.py").read_text()))
        assert doc and "import" in doc, f"trainer/{name}/__init__.py: say what it may import"
        assert name in trainer.__doc__, f"trainer/__init__.py does not list {name}"


def test_unit_tests_mirror_the_subpackages():
    tests = ROOT / "tests" / "unit" / "trainer"
    folders = sorted(p.name for p in tests.iterdir() if p.is_dir() and p.name != "__pycache__")
    assert set(folders) <= set(SUBPACKAGES), f"no trainer sub-package for {folders}"
    assert [p.name for p in tests.glob("test_*.py")] == ["test_layout.py"]


def private_imports(path: Path) -> list[tuple[str, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("trainer."):
            found += [(node.module, a.name) for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_no_test_imports_a_private_name_of_another_subpackage():
    crossing = []
    for path in (ROOT / "tests").rglob("test_*.py"):
        parts = path.relative_to(ROOT / "tests").parts
        own = parts[2] if parts[:2] == ("unit", "trainer") and len(parts) > 3 else None
        crossing += [f"{path.relative_to(ROOT)}: {module}.{name}"
                     for module, name in private_imports(path)
                     if module.split(".")[1] != own]
    assert not crossing


def test_the_private_import_check_sees_one(tmp_path):
    probe = tmp_path / "test_probe.py"
    probe.write_text("from trainer.ops.gate import _bound, public\n")
    assert private_imports(probe) == [("trainer.ops.gate", "_bound")]


def test_a_built_wheel_carries_every_module_and_the_driftserve_command(tmp_path):
    """What `pip install` of a release gets (not the editable checkout): every sub-package, and
    a `driftserve` that runs a verb importing most of the layers."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for pkg in ("trainer", "handlers"):
        shutil.copytree(ROOT / pkg, src / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", str(src),
                    "-w", str(tmp_path / "dist")], check=True, capture_output=True)
    wheel = next((tmp_path / "dist").glob("driftserve-*.whl"))
    modules = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    wanted = {p.relative_to(ROOT).as_posix() for pkg in ("trainer", "handlers")
              for p in (ROOT / pkg).rglob("*.py")}
    assert wanted <= modules, f"missing from the wheel: {sorted(wanted - modules)}"
    site = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--target", str(site), str(wheel)], check=True,
                   capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site)}
    run = subprocess.run([str(site / "bin" / "driftserve"), "rollout", "--help"], cwd=tmp_path,
                         env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("usage: driftserve rollout")
    where = subprocess.run([sys.executable, "-c", "import trainer.ops.rollout as m; print(m.__file__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.startswith(str(site))
