"""m3.code (and the coding harness) load without torch or any other part of m3."""

import subprocess
import sys

from conftest import REPO_ROOT

MODULES = [
    "agents",
    "budget",
    "cli",
    "dag",
    "docs",
    "fix",
    "local",
    "model",
    "planner",
    "progress",
    "ray_executor",
    "report",
    "review",
    "router",
    "sandbox",
    "scheduler",
    "scratch",
    "store",
    "testgen",
    "tools",
    "worker",
    "worktree",
]


def test_m3_code_imports_without_torch():
    code = (
        "import sys, m3.code, m3.eval.coding\n"
        + "".join(f"import m3.code.{m} as _\n" for m in MODULES)
        + "assert 'torch' not in sys.modules, 'torch imported'\n"
        + "bad = sorted(m for m in sys.modules if m.startswith('m3.') and not m.startswith(('m3.code', 'm3.eval')))\n"
        + "assert not bad, bad\n"
        + "print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_every_module_is_listed():
    names = {p.stem for p in (REPO_ROOT / "m3" / "code").glob("*.py")} - {"__init__"}
    assert names == set(MODULES)
