"""`m3 code review`: structured findings (severity, file, line, message, suggestion) for a diff or commit range.

The model answers in JSON; findings are validated (known severity, a file the diff touches, a positive line)
and the model gets one round to repair invalid ones, after which invalid findings are dropped and counted.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from m3.code.dag import extract_json
from m3.code.model import ChatModel
from m3.code.worktree import git

SEVERITIES = ("critical", "major", "minor", "info")
MAX_DIFF_CHARS = 60_000

PROMPT = """Review this change as a senior engineer. Report real problems only: bugs, security issues, performance
traps, missing error handling, missing tests, unclear code. For each finding give the file (as in the diff),
the line number in the new version of the file, a severity ({severities}), a message and a concrete suggestion.
Reply with JSON only: {{"findings": [{{"severity": "...", "file": "...", "line": 1, "message": "...",
"suggestion": "..."}}]}} (an empty list when the change is fine).

```diff
{diff}
```"""


@dataclass
class Finding:
    severity: str
    file: str
    line: int
    message: str
    suggestion: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def get_diff(workspace: Path, rev_range: str | None = None, staged: bool = False) -> str:
    """`A..B` or `A...B`: that range; a single rev: that commit; else staged or working-tree changes vs HEAD."""
    if rev_range and ".." in rev_range:
        return git(workspace, "diff", rev_range)
    if rev_range:
        return git(workspace, "show", "--format=", rev_range)
    return git(workspace, "diff", "--cached") if staged else git(workspace, "diff", "HEAD")


def diff_files(diff: str) -> set[str]:
    return set(re.findall(r"^\+\+\+ b/(.+)$", diff, re.M))


def check_findings(data, files: set[str]) -> tuple[list[Finding], list[str]]:
    items = data.get("findings") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return [], ['expected {"findings": [...]}']
    ok, problems = [], []
    for i, f in enumerate(items):
        where = f"finding #{i + 1}"
        if not isinstance(f, dict):
            problems.append(f"{where} must be an object")
            continue
        sev, file, line = str(f.get("severity", "")).lower(), f.get("file"), f.get("line")
        if sev not in SEVERITIES:
            problems.append(f"{where}: severity {sev!r} is not one of {list(SEVERITIES)}")
        elif file not in files:
            problems.append(f"{where}: file {file!r} is not in the diff (files: {sorted(files)})")
        elif not isinstance(line, int) or isinstance(line, bool) or line < 1:
            problems.append(f"{where}: line must be a positive integer")
        elif not str(f.get("message", "")).strip():
            problems.append(f"{where}: message is empty")
        else:
            ok.append(Finding(sev, file, line, str(f["message"]), str(f.get("suggestion", ""))))
    return ok, problems


def review(model: ChatModel, diff: str, max_tries: int = 2) -> tuple[list[Finding], list[str]]:
    """Findings sorted by severity then place, and the problems of any findings that had to be dropped."""
    if not diff.strip():
        return [], []
    files = diff_files(diff) or {"?"}
    clipped = diff if len(diff) <= MAX_DIFF_CHARS else diff[:MAX_DIFF_CHARS] + "\n... [diff cut]"
    messages = [{"role": "user", "content": PROMPT.format(severities=", ".join(SEVERITIES), diff=clipped)}]
    findings, problems = [], []
    for _ in range(max_tries):
        reply = model.complete(messages, temperature=0.0, max_tokens=2048)
        try:
            findings, problems = check_findings(extract_json(reply.text), files)
        except ValueError as e:
            findings, problems = [], [f"not valid JSON ({e})"]
        if not problems:
            break
        fix = "Some findings are invalid:\n- " + "\n- ".join(problems) + "\nReply with the corrected JSON only."
        messages += [{"role": "assistant", "content": reply.text}, {"role": "user", "content": fix}]
    findings.sort(key=lambda f: (SEVERITIES.index(f.severity), f.file, f.line))
    return findings, problems


def render_findings(findings: list[Finding]) -> str:
    if not findings:
        return "no findings"
    out = []
    for f in findings:
        out.append(f"[{f.severity}] {f.file}:{f.line}\n  {f.message}")
        if f.suggestion:
            out.append(f"  suggestion: {f.suggestion}")
    return "\n".join(out)
