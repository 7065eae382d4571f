"""AsyncEngine: concurrent streams, requests joining while others run, abort, bad input, early exit."""

import asyncio

import pytest

from m3.config import Config
from m3.engine.async_engine import AsyncEngine
from m3.sampling_params import SamplingParams
from tests.fixtures import MSA_TINY


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    eng = AsyncEngine(Config(model=tiny_model_dir, **MSA_TINY))
    yield eng
    eng.shutdown()


async def _collect(engine, prompt, params, request_id=None):
    deltas, last = [], None
    async for out in engine.generate(prompt, params, request_id):
        deltas.append(out.outputs[0].delta_text)
        last = out
    return "".join(deltas), last


def test_concurrent_streams_match_offline(engine, tiny_model_dir):
    from m3.llm import LLM

    prompts = ["Once upon a time", "import numpy as np\n", "The weather today"]
    params = SamplingParams(temperature=0.0, max_tokens=20, ignore_eos=True)

    async def main():
        first = asyncio.create_task(_collect(engine, prompts[0], params))
        await asyncio.sleep(0.05)  # the others join while the first is running
        rest = [asyncio.create_task(_collect(engine, p, params)) for p in prompts[1:]]
        return await asyncio.gather(first, *rest)

    results = asyncio.run(main())
    offline = LLM(tiny_model_dir, **MSA_TINY).generate(prompts, params)
    for (streamed, last), ref in zip(results, offline):
        assert last.finished and last.outputs[0].finish_reason == "length"
        assert streamed == last.outputs[0].text  # the deltas add up to the text
        assert last.outputs[0].token_ids == ref.outputs[0].token_ids


def test_abort_and_early_exit_free_pages(engine):
    free = engine.engine.block_manager.num_free

    async def main():
        params = SamplingParams(temperature=0.0, max_tokens=400, ignore_eos=True)
        task = asyncio.create_task(_collect(engine, "a long story", params, request_id="victim"))
        await asyncio.sleep(0.2)
        await engine.abort("victim")
        _, last = await task
        assert last.finished and last.outputs[0].finish_reason == "abort"
        # leaving the iteration early (a client that disconnects) aborts too
        stream = engine.generate("another story", params, request_id="leaver")
        async for _ in stream:
            break
        await stream.aclose()
        for _ in range(100):
            if not engine.engine.has_unfinished():
                break
            await asyncio.sleep(0.05)

    asyncio.run(main())
    assert engine.engine.block_manager.num_free == free
    assert engine.is_healthy


def test_bad_input_raises_before_streaming(engine):
    async def main():
        with pytest.raises(ValueError, match="max_model_len"):
            await _collect(engine, "hi", SamplingParams(max_tokens=10_000))

    asyncio.run(main())
    assert engine.is_healthy


def test_a_closed_caller_loop_does_not_kill_the_engine(engine):
    """Regression: returning from inside `async for` under asyncio.run closed the loop before the stream ended,
    and the engine thread died on call_soon_threadsafe."""

    async def leave_early():
        async for _ in engine.generate("story", SamplingParams(max_tokens=200, ignore_eos=True)):
            return

    asyncio.run(leave_early())
    for _ in range(200):
        if not engine.engine.has_unfinished():
            break
        import time

        time.sleep(0.05)
    assert engine.is_healthy

    async def again():
        return await _collect(engine, "hi", SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))

    _, last = asyncio.run(again())
    assert last.finished and len(last.outputs[0].token_ids) == 3
