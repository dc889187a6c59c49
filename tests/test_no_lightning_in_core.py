"""Nothing outside ``mrq_lightning/training/`` may import Lightning (docs/architecture.md).

Two checks: a static scan (``ast``) of every ``.py`` file of the package outside ``training/``, and a runtime
check that importing the core modules in a fresh interpreter leaves Lightning out of ``sys.modules``.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from conftest import COLD_IMPORT_TIMEOUT

PACKAGE = Path(__file__).resolve().parents[1] / "mrq_lightning"
REPO_ROOT = PACKAGE.parent
FORBIDDEN_ROOTS = {"lightning", "pytorch_lightning", "lightning_fabric"}


def _is_forbidden(module_name: str | None) -> bool:
    return bool(module_name) and module_name.split(".")[0] in FORBIDDEN_ROOTS


def lightning_imports(source: str, filename: str = "<string>") -> list[str]:
    """Every Lightning import in ``source``: import statements (at any depth, including inside functions and
    ``if TYPE_CHECKING`` blocks) and ``importlib.import_module`` / ``__import__`` calls with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source, filename=filename)):
        if isinstance(node, ast.Import):
            found += [f"line {node.lineno}: import {a.name}" for a in node.names if _is_forbidden(a.name)]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0 and _is_forbidden(node.module):
                found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in {"import_module", "__import__"} and node.args:
                arg = node.args[0]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_forbidden(arg.value):
                    found.append(f"line {node.lineno}: {name}({arg.value!r})")
    return found


def core_files() -> list[Path]:
    """Every module of the package outside ``training/``, and the plain-TorchRL examples."""
    training = PACKAGE / "training"
    examples = sorted((REPO_ROOT / "examples").glob("*.py"))
    return sorted(p for p in PACKAGE.rglob("*.py") if training not in p.parents) + examples


def test_scanner_detects_lightning_imports():
    # guard against a vacuous pass: the scanner itself must flag every form
    src = (
        "import os\n"
        "import lightning as L\n"
        "from lightning.pytorch import Trainer\n"
        "import pytorch_lightning\n"
        "from lightning_fabric import Fabric\n"
        "def f():\n"
        "    import lightning.pytorch.callbacks\n"
        "import importlib\n"
        "importlib.import_module('lightning.pytorch')\n"
        "from torchrl import lightning_like\n"  # not a lightning import
        "import lightning_utilities_not\n"  # different top-level name
        "from . import lightning\n"  # relative import of a sibling module, not the package
    )
    hits = lightning_imports(src)
    assert len(hits) == 6, hits


def test_core_modules_do_not_import_lightning():
    files = core_files()
    rel = {p.relative_to(REPO_ROOT).as_posix() for p in files}
    # the scan really covers the core modules, the update object and the examples
    assert {"mrq_lightning/__init__.py", "mrq_lightning/functional.py", "mrq_lightning/modules/networks.py",
            "mrq_lightning/objectives/mrq_loss.py", "mrq_lightning/agent/updater.py", "mrq_lightning/third_party.py",
            "examples/train_mrq_torchrl.py"} <= rel  # fmt: skip
    assert not any(r.startswith("mrq_lightning/training/") for r in rel)
    offenders = {}
    for path in files:
        hits = lightning_imports(path.read_text(encoding="utf-8"), str(path))
        if hits:
            offenders[path.relative_to(REPO_ROOT).as_posix()] = hits
    assert not offenders, f"Lightning imported outside mrq_lightning/training/: {offenders}"


def test_importing_core_leaves_lightning_out_of_sys_modules():
    code = (
        "import json, sys\n"
        "import mrq_lightning.agent, mrq_lightning.data, mrq_lightning.envs, mrq_lightning.evaluation\n"
        "import mrq_lightning.functional, mrq_lightning.hyperparameters, mrq_lightning.third_party\n"
        "import mrq_lightning.modules.builders, mrq_lightning.objectives.mrq_loss\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=COLD_IMPORT_TIMEOUT, check=False
    )
    assert proc.returncode == 0, proc.stderr
    modules = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"mrq_lightning.objectives.mrq_loss", "mrq_lightning.agent.updater", "mrq_lightning.data.buffer"} <= set(modules)
    assert "lightning" not in modules
    leaked = [m for m in modules if _is_forbidden(m)]
    assert not leaked, f"Lightning modules imported by the core: {leaked}"
