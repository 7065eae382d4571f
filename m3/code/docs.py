"""`m3 code docs PATH`: add missing docstrings (module, classes, functions) and write a module overview.

The model returns JSON `{"module": ..., "docstrings": {"qualified.name": ...}}`; docstrings are inserted at the
AST positions of definitions that lack one, and a file is only written back if it still parses.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path

from m3.code.dag import extract_json
from m3.code.model import ChatModel

PROMPT = """Document this Python module ({path}). Reply with JSON only:
{{"module": "a short overview of the module: purpose, main classes/functions, how they fit",
  "docstrings": {{"<name>": "docstring text (no quotes), Google style: summary, Args, Returns, Raises"}}}}
Give docstrings for exactly these definitions, which lack one: {names}

```python
{source}
```"""


@dataclass
class DocsResult:
    files: dict[str, list[str]] = field(default_factory=dict)  # path -> names documented
    overview: dict[str, str] = field(default_factory=dict)  # path -> module overview
    skipped: dict[str, str] = field(default_factory=dict)  # path -> why


def missing_docstrings(tree: ast.Module) -> dict[str, ast.AST]:
    out = {}

    def visit(node, prefix):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = prefix + child.name
                if ast.get_docstring(child) is None:
                    out[name] = child
                if isinstance(child, ast.ClassDef):
                    visit(child, name + ".")

    visit(tree, "")
    return out


def _quote(text: str, indent: str) -> list[str]:
    body = text.strip().replace("\\", "\\\\").replace('"""', '\\"\\"\\"').splitlines() or [""]
    if len(body) == 1:
        return [f'{indent}"""{body[0]}"""\n']
    return [f'{indent}"""{body[0]}\n', *[f"{indent}{b}\n" if b else "\n" for b in body[1:]], f'{indent}"""\n']


def insert_docstrings(source: str, docs: dict[str, str], module_doc: str | None) -> str:
    tree = ast.parse(source)
    lines = source.splitlines(keepends=True)
    targets = missing_docstrings(tree)
    edits = []
    for name, node in targets.items():
        if name in docs and str(docs[name]).strip():
            first = node.body[0]
            indent = lines[first.lineno - 1][: len(lines[first.lineno - 1]) - len(lines[first.lineno - 1].lstrip())]
            if first.lineno == node.lineno:  # one-liner `def f(): return 1`: leave it alone
                continue
            edits.append((first.lineno - 1, _quote(str(docs[name]), indent)))
    if module_doc and ast.get_docstring(tree) is None:
        at = 0
        while at < len(lines) and (lines[at].startswith("#!") or lines[at].startswith("# -*-")):
            at += 1
        edits.append((at, _quote(module_doc, "") + ["\n"]))
    for at, new in sorted(edits, key=lambda e: e[0], reverse=True):
        lines[at:at] = new
    return "".join(lines)


def document(model: ChatModel, path: Path, write: bool = True, max_files: int = 50) -> DocsResult:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*.py") if ".m3code" not in p.parts)
    result = DocsResult()
    for f in files[:max_files]:
        source = f.read_text()
        try:
            tree = ast.parse(source)
        except SyntaxError as e:
            result.skipped[str(f)] = f"does not parse: {e}"
            continue
        names = sorted(missing_docstrings(tree))
        if not names and ast.get_docstring(tree) is not None:
            continue
        prompt = PROMPT.format(path=f.name, names=names or "(none: only the module overview)", source=source[:40_000])
        reply = model.complete([{"role": "user", "content": prompt}], temperature=0.2, max_tokens=2048)
        try:
            data = extract_json(reply.text)
            docs, overview = dict(data.get("docstrings") or {}), str(data.get("module") or "").strip()
        except (ValueError, AttributeError) as e:
            result.skipped[str(f)] = f"reply was not the expected JSON ({e})"
            continue
        new = insert_docstrings(source, docs, overview or None)
        try:
            ast.parse(new)
        except SyntaxError as e:
            result.skipped[str(f)] = f"edited file would not parse ({e}); left unchanged"
            continue
        result.files[str(f)] = [n for n in names if n in docs]
        result.overview[str(f)] = overview
        if write and new != source:
            f.write_text(new)
    return result


def overview_markdown(result: DocsResult, root: Path) -> str:
    parts = ["# Module overview\n"]
    for f, text in result.overview.items():
        rel = Path(f).relative_to(root) if Path(f).is_relative_to(root) else Path(f)
        parts.append(f"## `{rel}`\n\n{text}\n")
    return "\n".join(parts)
