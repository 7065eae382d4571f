"""Task endpoints over the chat engine: POST /v1/code/generate and POST /v1/code/review.

Generation asks for fenced code blocks (what small models write reliably) and parses them into files. Review asks
for JSON matching `ReviewBody`; the answer is repaired (jsonrepair + field coercion) and validated, and when that
fails the model gets one more turn with the validation error. If that still does not validate, the client gets a
422 `invalid_model_output` naming the problem. Every model turn is billed as its own ledger row.
"""

import re

from fastapi import APIRouter, Request
from pydantic import ValidationError

from m3.protocol import CodeGenerateRequest, CodeGeneration, CodeReview, CodeReviewRequest, ReviewBody
from m3.server.errors import APIError
from m3.server.generation import Run
from m3.server.inputs import ERRORS, chat_prompt_ids, check_model, sampling_params, server_state, until_disconnect
from m3.server.jsonrepair import JSONRepairError, repair_json
from m3.server.streaming import usage_dict

router = APIRouter()

_BLOCK = re.compile(r"```([\w+.#-]*)[^\n]*\n(.*?)(?:```|\Z)", re.S)
_PATH_HINT = re.compile(r"(?:file(?:name)?|path)\s*[:=]\s*`?([\w./-]+\.\w+)`?", re.I)
_EXT = {
    "python": "py",
    "javascript": "js",
    "typescript": "ts",
    "go": "go",
    "rust": "rs",
    "java": "java",
    "c": "c",
    "cpp": "cpp",
    "c++": "cpp",
    "ruby": "rb",
    "shell": "sh",
    "bash": "sh",
    "sql": "sql",
    "html": "html",
}
_SEVERITY = {
    "blocker": "critical",
    "error": "high",
    "major": "high",
    "warning": "medium",
    "warn": "medium",
    "moderate": "medium",
    "minor": "low",
    "style": "low",
    "note": "info",
    "information": "info",
    "suggestion": "info",
}


async def _chat_turn(
    state,
    request: Request,
    messages: list[dict],
    body,
    endpoint: str,
    prefix: str,
    prefill: str = "",
    stop: list[str] | None = None,
):
    """One non-streaming chat turn billed as its own ledger row: (text, prompt_tokens, completion_tokens, id).
    `prefill` starts the answer (returned as part of the text): small models keep to JSON far better that way."""
    prompt_ids = chat_prompt_ids(state, messages, prefill)
    params = await sampling_params(
        state, request, _Sampling(body, stop), [prompt_ids], body.max_tokens, None, "messages"
    )
    run = Run(state, request, endpoint, [prompt_ids], params, prefix)
    await run.reserve()
    (final,) = await until_disconnect(request, run.collect())
    return prefill + final.outputs[0].text, run.num_prompt_tokens, run.num_completion_tokens, run.id


class _Sampling:
    """The sampling fields a task request sets; the rest at the engine's defaults (temperature 0.2 for code)."""

    def __init__(self, body, stop: list[str] | None):
        self.temperature = 0.2 if body.temperature is None else body.temperature
        self.seed = body.seed
        self.n = 1
        self.stop = stop
        self.ignore_eos = False
        self.top_p = self.top_k = self.min_p = None
        self.presence_penalty = self.frequency_penalty = self.repetition_penalty = None


# -- generate --
def parse_code_files(text: str, language: str) -> tuple[list[dict], str]:
    """Fenced blocks -> files (path from a 'File: x' hint just above, else numbered); the rest is the explanation.
    A reply with no fence at all is taken as one file of code."""
    files, prose, last = [], [], 0
    ext = _EXT.get(language.lower(), "txt")
    for i, m in enumerate(_BLOCK.finditer(text)):
        before = text[last : m.start()]
        prose.append(before)
        last = m.end()
        hints = _PATH_HINT.findall(before.strip().splitlines()[-1] if before.strip() else "")
        content = m.group(2).rstrip("\n") + "\n"
        if not content.strip():
            continue
        path = hints[-1] if hints else ("main" if i == 0 else f"part{i + 1}") + f".{ext}"
        files.append({"path": path, "language": (m.group(1) or language).lower(), "content": content})
    prose.append(text[last:])
    if not files and text.strip():
        return [{"path": f"main.{ext}", "language": language.lower(), "content": text.strip() + "\n"}], ""
    return files, "".join(prose).strip()


@router.post("/v1/code/generate", response_model=CodeGeneration, responses=ERRORS, summary="Generate code for a task")
async def code_generate(body: CodeGenerateRequest, request: Request):
    state = server_state(request)
    check_model(state, body.model)
    framework = f" using {body.framework}" if body.framework else ""
    system = (
        f"You are an expert {body.language} programmer. Write complete, working code{framework}. Put each file in "
        f"a fenced code block, with a line 'File: path' just above it. After the code, explain it briefly."
    )
    task = body.prompt
    if body.include_tests:
        task += "\n\nInclude unit tests in their own file."
    if body.context:
        task = f"Existing code:\n```\n{body.context}\n```\n\n{task}"
    text, prompt_tokens, completion_tokens, run_id = await _chat_turn(
        state,
        request,
        [{"role": "system", "content": system}, {"role": "user", "content": task}],
        body,
        "code.generate",
        "codegen",
    )
    files, explanation = parse_code_files(text, body.language)
    if not files:
        raise APIError(422, "the model produced no code; try again or rephrase the task", code="invalid_model_output")
    return CodeGeneration(
        id=run_id,
        model=state.model_name,
        language=body.language,
        files=files,
        explanation=explanation,
        usage=usage_dict(prompt_tokens, completion_tokens),
    )


# -- review --
REVIEW_SCHEMA_HINT = (
    'a JSON object with "issues" (a list; each issue has "severity": one of critical, high, medium, low, info; '
    '"file"; "line": a number; "message": what is wrong; "suggestion": how to fix it), "quality_score" (an integer '
    'from 0 to 100) and "summary" (one paragraph). Example: {"issues": [{"severity": "high", "file": "db.py", '
    '"line": 3, "message": "SQL is built by string formatting, which allows injection", "suggestion": "Use a '
    'parameterized query"}], "quality_score": 55, "summary": "Works, but one injection risk."}'
)
REVIEW_PREFILL = '{"issues": ['


def coerce_review(value, default_file: str | None) -> ReviewBody:
    """Bend a repaired JSON value toward ReviewBody (synonyms, strings for numbers), then validate it strictly."""
    if isinstance(value, list):
        value = {"issues": value}
    if not isinstance(value, dict):
        raise ValueError("the answer is not a JSON object")
    value = dict(value)
    if "quality_score" not in value:
        for alias in ("score", "quality", "rating"):
            if alias in value:
                value["quality_score"] = value.pop(alias)
    score = value.get("quality_score")
    if isinstance(score, str):
        score = re.match(r"\s*(\d+(?:\.\d+)?)", score)
        score = float(score.group(1)) if score else None
    if isinstance(score, float):
        score = round(score)
    if isinstance(score, int):
        value["quality_score"] = min(100, max(0, score))
    issues = []
    for issue in value.get("issues") or []:
        if not isinstance(issue, dict):
            continue
        issue = dict(issue)
        severity = str(issue.get("severity", "")).strip().lower()
        issue["severity"] = _SEVERITY.get(severity, severity)
        if "message" not in issue:
            for alias in ("description", "issue", "problem", "text"):
                if alias in issue:
                    issue["message"] = issue.pop(alias)
                    break
        line = issue.get("line")
        if isinstance(line, str):
            digits = re.match(r"\s*(\d+)", line)
            issue["line"] = int(digits.group(1)) if digits else None
        if not issue.get("file"):
            issue["file"] = default_file
        issues.append(issue)
    value["issues"] = issues
    return ReviewBody.model_validate(value)


def _diff_file(diff: str) -> str | None:
    paths = re.findall(r"^\+\+\+ (?:b/)?(\S+)", diff, re.M)
    return paths[0] if len(set(paths)) == 1 and paths[0] != "/dev/null" else None


@router.post("/v1/code/review", response_model=CodeReview, responses=ERRORS, summary="Review code or a diff")
async def code_review(body: CodeReviewRequest, request: Request):
    state = server_state(request)
    check_model(state, body.model)
    if bool(body.code) == bool(body.diff):
        raise APIError(400, "give exactly one of code or diff", param="code")
    language = f" {body.language}" if body.language else ""
    system = (
        f"You are a meticulous{language} code reviewer. Check the code against these standards: "
        f"{', '.join(body.standards)}. Answer with only {REVIEW_SCHEMA_HINT}"
    )
    what = "unified diff" if body.diff else "code" + (f" from {body.filename}" if body.filename else "")
    user = f"Review this {what}:\n```\n{body.diff or body.code}\n```"
    messages = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    default_file = body.filename or (_diff_file(body.diff) if body.diff else None)
    prompt_tokens = completion_tokens = 0
    problem, first_id = "", None
    for _ in range(2):
        text, p, c, run_id = await _chat_turn(
            state, request, messages, body, "code.review", "review", REVIEW_PREFILL, stop=["```"]
        )
        first_id = first_id or run_id
        prompt_tokens, completion_tokens = prompt_tokens + p, completion_tokens + c
        try:
            review = coerce_review(repair_json(text), default_file)
        except (JSONRepairError, ValueError, ValidationError) as exc:
            problem = _short_error(exc)
            messages += [
                {"role": "assistant", "content": text},
                {
                    "role": "user",
                    "content": f"That was not valid: {problem}. Reply with only the corrected answer: "
                    f"{REVIEW_SCHEMA_HINT}",
                },
            ]
            continue
        return CodeReview(
            id=first_id,
            model=state.model_name,
            usage=usage_dict(prompt_tokens, completion_tokens),
            **review.model_dump(),
        )
    raise APIError(
        422,
        f"the model's review could not be repaired into the review schema after 2 attempts: {problem}",
        code="invalid_model_output",
    )


def _short_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        e = exc.errors()[0]
        return f"{'.'.join(map(str, e['loc'])) or 'answer'}: {e['msg']}"
    return str(exc)
