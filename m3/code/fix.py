"""`m3 code fix --error LOG`: reproduce with a failing test, locate the cause, fix, and report the root cause.

Three checked stages, each with bounded tries and the sandbox's verdict fed back to the model:
1. a regression test that FAILS on the current code (the reproduction);
2. a search/replace fix plus the faulty place and causal chain, after which the test must PASS;
3. a root-cause report: reproduction, faulty place, causal chain, fix (diff), regression test.
All of it happens in a scratch copy; the fix and the test reach the workspace only when both checks hold.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path

from m3.code.dag import extract_json
from m3.code.model import ChatModel
from m3.code.sandbox import Sandbox
from m3.code.scratch import scratch_copy

PYTEST = ["python", "-m", "pytest", "-q", "-p", "no:cacheprovider", "--no-header", "-x"]

REPRO = """A user hit this error:
```
{log}
```
Relevant files:
{files}
Write a pytest test that reproduces the failure: it must FAIL on the current code because of this bug and PASS
once the bug is fixed. Import the code under test by module path from the repository root.
Reply with JSON only: {{"test_file": "tests/test_regression_m3.py", "test_code": "..."}}"""

FIX = """The reproduction test {test_file} fails as expected:
```
{output}
```
Find the root cause and fix it with the smallest change. Reply with JSON only:
{{"file": "path/of/faulty/file.py", "line": 1, "root_cause": "one sentence",
  "causal_chain": ["step from the faulty code", "...", "to the observed error"],
  "search": "exact existing code to replace (unique in the file)", "replace": "the fixed code"}}"""


@dataclass
class FixResult:
    ok: bool
    stage: str  # where it ended: "reproduce", "fix" or "done"
    test_file: str = ""
    test_code: str = ""
    repro_output: str = ""
    place: str = ""
    root_cause: str = ""
    causal_chain: list[str] = field(default_factory=list)
    diff: str = ""
    notes: list[str] = field(default_factory=list)


def traceback_files(log: str, workspace: Path) -> list[str]:
    out = []
    for name in re.findall(r'File "([^"]+)", line \d+', log) + re.findall(r"^([\w/.-]+\.py):\d+", log, re.M):
        p = Path(name)
        rel = p.relative_to(workspace) if p.is_absolute() and p.is_relative_to(workspace) else p
        if not p.is_absolute() or p.is_relative_to(workspace):
            if (workspace / rel).is_file() and str(rel) not in out:
                out.append(str(rel))
    return out


def _ask(model: ChatModel, messages: list[dict]) -> dict:
    reply = model.complete(messages, temperature=0.2, max_tokens=2048)
    messages.append({"role": "assistant", "content": reply.text})
    data = extract_json(reply.text)
    if not isinstance(data, dict):
        raise ValueError("expected a JSON object")
    return data


def fix_error(model: ChatModel, workspace: Path, log: str, sandbox: Sandbox, max_tries: int = 3, apply: bool = True):
    workspace = workspace.resolve()
    scratch = scratch_copy(workspace, "fix")
    names = traceback_files(log, workspace)
    files = "\n".join(f"--- {n} ---\n{(workspace / n).read_text()[:12_000]}" for n in names) or "(none found)"
    messages = [{"role": "user", "content": REPRO.format(log=log[-6000:], files=files)}]
    res = FixResult(False, "reproduce")
    # -- 1. reproduce: the test must fail before the fix --
    for _ in range(max_tries):
        try:
            data = _ask(model, messages)
            res.test_file, res.test_code = str(data["test_file"]), str(data["test_code"])
            if Path(res.test_file).is_absolute() or ".." in Path(res.test_file).parts:
                raise ValueError("test_file must be a relative path inside the repository")
        except (ValueError, KeyError) as e:
            messages.append({"role": "user", "content": f"Invalid reply ({e}). Reply with the JSON only."})
            continue
        (scratch / res.test_file).parent.mkdir(parents=True, exist_ok=True)
        (scratch / res.test_file).write_text(res.test_code)
        r = sandbox.run([*PYTEST, res.test_file], scratch)
        res.repro_output = (r.stdout + r.stderr)[-3000:]
        if r.returncode == 1:  # tests ran and failed; 2+ is a collection/usage error, not a reproduction
            break
        why = "passes, so it does not reproduce the bug" if r.returncode == 0 else "errors before running"
        res.notes.append(f"reproduction attempt {why}")
        messages.append({"role": "user", "content": f"The test {why}:\n{res.repro_output}\nWrite a new one."})
    else:
        return res
    # -- 2. fix: the same test must pass after the patch --
    res.stage = "fix"
    messages.append({"role": "user", "content": FIX.format(test_file=res.test_file, output=res.repro_output)})
    for _ in range(max_tries):
        try:
            data = _ask(model, messages)
            target = (scratch / str(data["file"])).resolve()
            if not target.is_relative_to(scratch) or not target.is_file():
                raise ValueError(f"no such file in the repository: {data['file']}")
            before = target.read_text()
            if before.count(str(data["search"])) != 1:
                raise ValueError("'search' must occur exactly once in the file")
        except (ValueError, KeyError) as e:
            messages.append({"role": "user", "content": f"Invalid fix ({e}). Reply with corrected JSON only."})
            continue
        after = before.replace(str(data["search"]), str(data["replace"]), 1)
        target.write_text(after)
        r = sandbox.run([*PYTEST, res.test_file], scratch)
        if r.returncode == 0:
            rel = str(target.relative_to(scratch))
            res.place, res.root_cause = f"{rel}:{data.get('line', '?')}", str(data.get("root_cause", ""))
            res.causal_chain = [str(x) for x in data.get("causal_chain", [])]
            res.diff = "".join(
                difflib.unified_diff(before.splitlines(True), after.splitlines(True), f"a/{rel}", f"b/{rel}")
            )
            res.ok, res.stage = True, "done"
            if apply:
                (workspace / rel).write_text(after)
                (workspace / res.test_file).parent.mkdir(parents=True, exist_ok=True)
                (workspace / res.test_file).write_text(res.test_code)
            return res
        target.write_text(before)
        out = (r.stdout + r.stderr)[-3000:]
        res.notes.append("a fix attempt left the reproduction failing")
        messages.append({"role": "user", "content": f"After that change the test still fails:\n{out}\nTry again."})
    return res


def render_fix(res: FixResult) -> str:
    head = "# Root-cause report" + ("" if res.ok else f" (incomplete: stopped at stage '{res.stage}')")
    parts = [
        head,
        "",
        "## Reproduction",
        f"`{res.test_file}` fails on the original code:",
        "```",
        res.repro_output.strip(),
        "```",
    ]
    if res.ok:
        parts += ["", "## Faulty place", res.place, "", "## Root cause", res.root_cause, "", "## Causal chain"]
        parts += [f"{i}. {step}" for i, step in enumerate(res.causal_chain, 1)]
        parts += ["", "## Fix", "```diff", res.diff.strip(), "```", "", "## Regression test", f"`{res.test_file}`:"]
        parts += ["```python", res.test_code.strip(), "```"]
    if res.notes:
        parts += ["", "## Notes", *[f"- {n}" for n in res.notes]]
    return "\n".join(parts)
