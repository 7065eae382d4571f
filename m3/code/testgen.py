"""`m3 code tests FILE`: generate pytest tests, run them in the sandbox, keep those that pass.

Failing tests are cut out by their AST line ranges (a parametrized test goes whole if any case fails) and
the reason pytest gave is reported; the kept file is run once more to confirm it passes before it is written.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

from m3.code.model import ChatModel
from m3.code.sandbox import Sandbox
from m3.code.scratch import code_block, scratch_copy

PROMPT = """Write pytest tests for the Python module `{module}` (file {path}), shown below. Import it as
`from {module} import ...` (the repository root is on sys.path). Cover normal cases, edge cases and errors.
Reply with one ```python block holding the complete test module.

```python
{source}
```"""

PYTEST = ["python", "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", "--no-header"]


@dataclass
class TestGenResult:
    out_path: str | None
    passed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # test name -> why
    output: str = ""


def module_name(rel: Path) -> str:
    parts = list(rel.with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def outcomes(pytest_output: str) -> tuple[set[str], dict[str, str]]:
    """Names of passed tests and failed ones with their reason, from pytest's -rA summary."""
    passed, failed = set(), {}
    for m in re.finditer(r"^PASSED \S+?::(\S+)", pytest_output, re.M):
        passed.add(m.group(1))
    for m in re.finditer(r"^(?:FAILED|ERROR) \S+?::(\S+)(?: - (.*))?$", pytest_output, re.M):
        failed[m.group(1)] = (m.group(2) or "error").strip()
    return passed, failed


def drop_tests(source: str, names: set[str]) -> str:
    """Remove test functions (top level or in classes) whose base name is in `names`."""
    bases = {n.split("[")[0].split("::")[-1] for n in names}
    tree = ast.parse(source)
    spans = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name in bases:
            start = min([node.lineno] + [d.lineno for d in node.decorator_list])
            spans.append((start, node.end_lineno))
    lines = source.splitlines(keepends=True)
    for start, end in sorted(spans, reverse=True):
        del lines[start - 1 : end]
    return "".join(lines)


def generate_tests(
    model: ChatModel, workspace: Path, file: str, sandbox: Sandbox, out: str | None = None
) -> TestGenResult:
    src = (workspace / file).resolve()
    rel = src.relative_to(workspace.resolve())
    module = module_name(rel)
    reply = model.complete(
        [{"role": "user", "content": PROMPT.format(module=module, path=rel, source=src.read_text()[:40_000])}],
        temperature=0.2,
        max_tokens=2048,
    )
    code = code_block(reply.text)
    out_rel = Path(out or f"tests/test_{rel.stem}_m3.py")
    scratch = scratch_copy(workspace, "tests")
    target = scratch / out_rel
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        ast.parse(code)
    except SyntaxError as e:
        return TestGenResult(None, failed={"<module>": f"generated code does not parse: {e}"})
    target.write_text(code)
    r = sandbox.run([*PYTEST, str(out_rel)], scratch)
    passed, failed = outcomes(r.stdout)
    if not passed:
        why = failed or {"<module>": (r.stdout + r.stderr).strip().splitlines()[-1:] or ["no tests ran"]}
        return TestGenResult(None, [], {k: str(v) for k, v in why.items()}, r.stdout[-4000:])
    kept = drop_tests(code, set(failed)) if failed else code
    target.write_text(kept)
    r2 = sandbox.run([*PYTEST, str(out_rel)], scratch)
    passed2, failed2 = outcomes(r2.stdout)
    if failed2 or r2.returncode != 0:
        return TestGenResult(None, sorted(passed2), {**failed, **failed2}, r2.stdout[-4000:])
    dest = workspace / out_rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(kept)
    return TestGenResult(str(out_rel), sorted(passed2), failed, r2.stdout[-4000:])
