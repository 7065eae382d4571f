"""Code generation and review endpoints with a scripted engine (the exact model words are the point here), JSON
repair on its own, and the admission gate's priority order."""

import asyncio

import httpx
import pytest

from m3.server.jsonrepair import JSONRepairError, repair_json
from tests.server.live import TEST_PLANS, ScriptedEngine, auth


@pytest.fixture(scope="module")
def scripted(tiny_engine, tmp_path_factory):
    from m3.server.app import create_app

    engine = ScriptedEngine(tiny_engine.tokenizer)
    app = create_app(
        engine, f"sqlite:///{tmp_path_factory.mktemp('code') / 'm3.db'}", plans=TEST_PLANS, model_name="tiny"
    )
    key = app.state.m3.ledger.create_key("coder", "max")[1]
    return engine, app, key


def call(scripted, path: str, body: dict) -> httpx.Response:
    _, app, key = scripted

    async def go():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.post(path, json=body, headers=auth(key))

    return asyncio.run(go())


def test_review_valid_answer(scripted):
    engine, app, _ = scripted
    engine.replies = [  # continues the prefilled '{"issues": ['
        '{"severity": "high", "line": 2, "message": "eval runs arbitrary code", '
        '"suggestion": "use ast.literal_eval"}], "quality_score": 40, "summary": "unsafe"}'
    ]
    r = call(
        scripted,
        "/v1/code/review",
        {"code": "def f(x):\n    return eval(x)\n", "filename": "f.py", "standards": ["security"]},
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "code.review" and body["quality_score"] == 40 and body["summary"] == "unsafe"
    assert body["issues"] == [
        {
            "severity": "high",
            "file": "f.py",
            "line": 2,
            "message": "eval runs arbitrary code",
            "suggestion": "use ast.literal_eval",
        }
    ]
    assert body["usage"]["completion_tokens"] > 0
    prompt = engine.tokenizer.decode(engine.prompts[-1])
    assert "security" in prompt and prompt.rstrip().endswith('{"issues": [')  # the answer starts prefilled


def test_review_answer_is_repaired(scripted):
    engine, _, _ = scripted
    # the prefill already wrote '{"issues": [' — the model continues it, forgetting to close the list
    engine.replies = [
        '{"severity": "Warning", "line": "7-9", "description": "bare except"},\n "score": "85/100", '
        '"summary": "ok",}\n```\nSome prose after the JSON.'
    ]
    diff = "--- a/app.py\n+++ b/app.py\n@@ -1 +1 @@\n-x = 1\n+try: pass\n+except: pass\n"
    r = call(scripted, "/v1/code/review", {"diff": diff})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["quality_score"] == 85
    assert body["issues"] == [
        {"severity": "medium", "file": "app.py", "line": 7, "message": "bare except", "suggestion": None}
    ]


def test_review_gets_a_second_turn_then_a_clear_422(scripted):
    engine, app, _ = scripted
    ledger = app.state.m3.ledger
    engine.replies = ["I think the code is fine.", '{"severity": "high", "message": "x"}], "quality_score": 70}']
    r = call(scripted, "/v1/code/review", {"code": "print(1)"})
    assert r.status_code == 200 and r.json()["quality_score"] == 70  # fixed on the repair turn
    engine.replies = ["no json here", "still none"]
    r = call(scripted, "/v1/code/review", {"code": "print(1)"})
    assert r.status_code == 422
    error = r.json()["error"]
    assert error["code"] == "invalid_model_output" and "after 2 attempts" in error["message"]
    rows = ledger.usage_rows("coder")
    assert rows and ledger.check_integrity() == []  # every model turn is billed
    assert call(scripted, "/v1/code/review", {"code": "x", "diff": "y"}).status_code == 400


def test_generate_parses_files(scripted):
    engine, _, _ = scripted
    engine.replies = [
        "Here you go.\nFile: pkg/rev.py\n```python\ndef rev(s):\n    return s[::-1]\n```\n"
        "File: tests/test_rev.py\n```python\nfrom pkg.rev import rev\n\n\n"
        "def test_rev():\n    assert rev('ab') == 'ba'\n```\n"
        "Slicing reverses."
    ]
    r = call(scripted, "/v1/code/generate", {"prompt": "reverse a string", "include_tests": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [f["path"] for f in body["files"]] == ["pkg/rev.py", "tests/test_rev.py"]
    assert body["files"][0]["content"] == "def rev(s):\n    return s[::-1]\n" and "Slicing" in body["explanation"]
    engine.replies = ["def add(a, b):\n    return a + b"]  # no fence at all: taken as one file
    body = call(scripted, "/v1/code/generate", {"prompt": "add", "language": "python"}).json()
    assert body["files"] == [{"path": "main.py", "language": "python", "content": "def add(a, b):\n    return a + b\n"}]


@pytest.mark.parametrize(
    "text, expected",
    [
        ('```json\n{"a": [1, 2,],}\n```', {"a": [1, 2]}),
        ("Sure! {'a': True, 'b': None}", {"a": True, "b": None}),
        ('{"a": {"b": [1, {"c": "x"', {"a": {"b": [1, {"c": "x"}]}}),  # cut off by max_tokens
        ('{"issues": [{"m": 1}, "score": 5}', {"issues": [{"m": 1}], "score": 5}),  # unclosed list
        ('[{"m": "say \\"hi\\""}]', [{"m": 'say "hi"'}]),
    ],
)
def test_repair_json(text, expected):
    assert repair_json(text) == expected


def test_repair_json_gives_up_clearly():
    with pytest.raises(JSONRepairError):
        repair_json("no structure at all")


def test_admission_gate_orders_by_priority():
    from m3.server.admission import AdmissionGate

    async def main():
        gate = AdmissionGate(max_seqs=2)
        order = []
        release = asyncio.Event()

        async def job(name, priority, n=1):
            async with gate.admit(priority, n):
                order.append(name)
                await release.wait()

        first = [asyncio.create_task(job(f"run{i}", 0)) for i in range(2)]
        await asyncio.sleep(0.01)
        waiting = [
            asyncio.create_task(job("plus", 0)),
            asyncio.create_task(job("max", 1)),
            asyncio.create_task(job("ultra", 2)),
        ]
        cancelled = asyncio.create_task(job("gone", 5))
        await asyncio.sleep(0.01)
        assert gate.num_running == 2 and gate.num_waiting == 4
        cancelled.cancel()
        await asyncio.sleep(0.01)
        release.set()
        await asyncio.gather(*first, *waiting)
        assert gate.num_running == 0 and gate.num_waiting == 0
        return order

    assert asyncio.run(main()) == ["run0", "run1", "ultra", "max", "plus"]
