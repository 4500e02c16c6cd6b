"""The project's environment: the torch and Detectron2 floors, optional packages named by their extra, the
dependencies the tests and tools import declared where pip sees them, and the Makefile's choice of
interpreter (issue: a fresh machine with only python3)."""
import ast
import importlib.metadata as md
import os
import re
import subprocess
import sys

import pytest

from d2seg.utils.dependencies import (
    MIN_DETECTRON2,
    MIN_TORCH,
    check_detectron2_version,
    check_torch_version,
    require,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# imported by the test suite but installed by tools/install_*.sh, not by pip's extras:
# the reference library (with its pinned recipe), Detectron2 (not on PyPI under its name)
NOT_FROM_EXTRAS = {"mmseg", "mmcv", "mmcls", "mmsegmentation", "detectron2", "sal-detectron2"}


def test_torch_floor_names_both_versions():
    need = ".".join(map(str, MIN_TORCH))
    with pytest.raises(ImportError, match=rf"torch >= {re.escape(need)}.*torch 2\.4\.1"):
        check_torch_version("2.4.1+cpu")
    check_torch_version(f"{need}.0")  # the floor itself passes
    check_torch_version("2.14.1+cu130")


def test_import_d2seg_on_old_torch_fails_clearly():
    code = "import torch; torch.__version__ = '2.1.0'; import d2seg"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "d2seg needs torch >= " in proc.stderr and "torch 2.1.0" in proc.stderr


def test_detectron2_floor_names_both_versions_and_how_to_install():
    need = ".".join(map(str, MIN_DETECTRON2))

    def loader(dataset, sampler, total_batch_size, *, single_gpu_batch_size=None, seed=None,
               **kwargs):  # Detectron2's build_batch_data_loader from 2024-02 on
        pass

    def old_loader(dataset, sampler, total_batch_size, *, single_gpu_batch_size=None,
                   **kwargs):  # before
        pass

    with pytest.raises(ImportError, match=rf"Detectron2 >= {re.escape(need)} .*Detectron2 0\.5\b"
                                          r".*sal-detectron2==0\.7\.2.*git\+https://github"):
        check_detectron2_version("0.5", loader)
    # Detectron2's main still calls itself 0.6: a main older than the floor fails too
    with pytest.raises(ImportError, match=r"Detectron2 0\.6 of before 2024-02"):
        check_detectron2_version("0.6", old_loader)
    check_detectron2_version(need, loader)  # the floor itself passes
    check_detectron2_version("0.7.2", loader)
    check_detectron2_version()  # the installed one


def test_import_d2seg_on_old_detectron2_fails_clearly():
    code = "import detectron2; detectron2.__version__ = '0.4'; import d2seg"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode != 0
    assert "d2seg needs Detectron2 >= " in proc.stderr and "Detectron2 0.4" in proc.stderr


def test_require_names_the_extra():
    assert require("json", "datasets", "x").dumps([1]) == "[1]"
    with pytest.raises(ImportError, match=r"tools/foo\.py needs .*'no_such_pkg_d2seg'.*d2seg\[deploy\]"):
        require("no_such_pkg_d2seg.sub", "deploy", "tools/foo.py")


def test_dataset_tool_without_scipy_names_the_extra(tmp_path):
    """voc_aug.py on a machine without scipy: exit 2 and the extra, not a bare ModuleNotFoundError."""
    block = (
        "import sys, runpy\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'scipy' or name.startswith('scipy.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}')\n"
        "sys.meta_path.insert(0, Block())\n"
        f"sys.argv = ['voc_aug.py', {str(tmp_path)!r}, {str(tmp_path)!r}]\n"
        f"runpy.run_path({os.path.join(REPO, 'tools', 'datasets', 'voc_aug.py')!r}, run_name='__main__')\n"
    )
    proc = subprocess.run([sys.executable, "-c", block], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2, proc.stderr
    assert "pip install 'd2seg[datasets]'" in proc.stderr and "scipy" in proc.stderr
    assert "Traceback" not in proc.stderr


def _declared():
    """Distributions d2seg's installed metadata requires, per extra ("" = install_requires)."""
    out = {}
    for req in md.requires("d2seg") or []:
        name = re.split(r"[ ;<>=!\[~]", req, 1)[0].lower().replace("_", "-")
        m = re.search(r"extra == ['\"]([\w-]+)['\"]", req)
        out.setdefault(m.group(1) if m else "", set()).add(name)
    return out


def test_test_extra_declares_what_the_tests_need():
    declared = _declared()
    for pkg in ("pytest", "hypothesis", "scipy", "onnxruntime", "submitit"):
        assert pkg in declared.get("test", set()), (pkg, declared.get("test"))
    assert {"scipy", "cityscapesscripts"} <= declared.get("datasets", set())
    assert "torch" in declared[""]


def _closure(names):
    """``names`` and every distribution they require, recursively (what pip brings with them)."""
    todo, seen = list(names), set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            reqs = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        todo += [re.split(r"[ ;<>=!\[~(]", r, 1)[0].lower().replace("_", "-")
                 for r in reqs if "extra ==" not in r]
    return seen


def _third_party_imports(paths):
    stdlib = set(sys.stdlib_module_names)
    # the suite's, the tools' and the development helpers' own modules (tools/, dev/ and tests/
    # are on sys.path there; dev/ needs MMSegmentation, the test-only reference)
    dev = [f for f in os.listdir(os.path.join(REPO, "dev")) if f.endswith(".py")]
    local = {"d2seg"} | {os.path.splitext(os.path.basename(p))[0] for p in [*paths, *dev]}
    found = {}
    for path in paths:
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for n in names:
                top = n.split(".")[0]
                if top not in stdlib and top not in local and not top.startswith("test_"):
                    found.setdefault(top, path)
    return found


def test_every_import_of_tests_and_tools_is_declared():
    """What tests/ and tools/ import comes from d2seg's requirements (any extra), Detectron2's
    wheel or the reference recipe: a package only present on the developer's machine fails here."""
    paths = []
    for folder in ("tests", "tools"):
        for dirpath, _, files in os.walk(os.path.join(REPO, folder)):
            paths += [os.path.join(dirpath, f) for f in files if f.endswith(".py")]
    dist_of = md.packages_distributions()
    declared = _closure(set().union(*_declared().values())) | NOT_FROM_EXTRAS
    undeclared = {}
    for top, path in _third_party_imports(paths).items():
        dists = {d.lower().replace("_", "-") for d in dist_of.get(top, [])}
        if not dists & declared and top not in NOT_FROM_EXTRAS:
            undeclared[top] = os.path.relpath(path, REPO)
    assert not undeclared, f"imported but not declared in setup.py (module: first file): {undeclared}"


def _make_dry_run(*args, env=None):
    e = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON", "VENV")}
    e.update(env or {})
    proc = subprocess.run(["make", "-n", "-C", REPO, *args], capture_output=True, text=True, env=e)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.skipif(subprocess.run(["which", "make"], capture_output=True).returncode != 0,
                    reason="make is not installed")
def test_makefile_uses_the_project_venv_unless_told_otherwise():
    venv_python = os.path.join(REPO, ".venv", "bin", "python")
    out = _make_dry_run("demo")
    assert f"{venv_python} tools/train_net.py" in out and "python3 -m venv" in out
    out = _make_dry_run("test", env={"VIRTUAL_ENV": "/opt/someenv"})
    assert "/opt/someenv/bin/python -m pytest" in out
    out = _make_dry_run("test", "VENV=/tmp/elsewhere")
    assert "/tmp/elsewhere/bin/python -m pytest" in out
    out = _make_dry_run("demo", "PYTHON=/usr/bin/python3.11")
    assert "/usr/bin/python3.11 tools/train_net.py" in out
    for target in ("demo", "test"):  # no bare `python` / `pip` that would hit the system's
        for line in _make_dry_run(target).splitlines():
            assert not re.match(r"\s*(python|pip)\s", line), line
