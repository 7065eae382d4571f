"""Engine behaviour on a tiny random model: batching, chunking, preemption, abort, seeds, stops, bad input."""

import pytest

from m3.llm import LLM
from m3.sampling_params import SamplingParams
from tests.fixtures import MSA_TINY

PROMPTS = [
    "The quick brown fox jumps over the lazy dog. " * 3,
    "def fibonacci(n):\n    if n < 2:\n        return n\n",
    "1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25",
    "Hello",
]
GREEDY = SamplingParams(temperature=0.0, max_tokens=24, ignore_eos=True)


@pytest.fixture(scope="module", params=["dense", "msa"])
def llm(request, tiny_model_dir):
    knobs = MSA_TINY if request.param == "msa" else dict(attention="dense", block_size=8)
    return LLM(tiny_model_dir, max_num_seqs=8, max_num_batched_tokens=512, **knobs)


def _tokens(outputs):
    return [o.outputs[0].token_ids for o in outputs]


def test_batched_equals_one_by_one(llm):
    batched = _tokens(llm.generate(PROMPTS, GREEDY))
    single = [_tokens(llm.generate([p], GREEDY))[0] for p in PROMPTS]
    assert batched == single
    assert all(len(t) == 24 for t in batched)


def test_msa_is_actually_sparse(tiny_model_dir):
    llm = LLM(tiny_model_dir, **MSA_TINY)
    prompt_ids = llm.tokenizer.encode(PROMPTS[0] * 3)
    llm.generate([prompt_ids], GREEDY)
    num_blocks = -(-(len(prompt_ids) + 23) // 8)  # pages in the cache at the last decode step
    # sink + window + current + top-k = 5 blocks read, of num_blocks
    assert llm.engine.runner.selected_share() == pytest.approx(5 / num_blocks)


def test_chunked_prefill_equals_unchunked(tiny_model_dir):
    knobs = dict(MSA_TINY, max_num_seqs=8)
    whole = LLM(tiny_model_dir, max_num_batched_tokens=512, **knobs)
    chunked = LLM(tiny_model_dir, max_num_batched_tokens=8, **knobs)
    out = chunked.generate(PROMPTS, GREEDY)
    assert _tokens(out) == _tokens(whole.generate(PROMPTS, GREEDY))
    assert chunked.engine.num_steps > whole.engine.num_steps


def test_preemption_loses_nothing(tiny_model_dir):
    roomy = LLM(tiny_model_dir, **MSA_TINY)
    # 16 pages of 8 tokens cannot hold four sequences of 45-105 tokens at once: some are preempted and recomputed.
    tight = LLM(tiny_model_dir, num_kv_blocks=16, max_model_len=128, **MSA_TINY)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    out = tight.generate(PROMPTS, params)
    assert tight.engine.scheduler.num_preemptions > 0
    assert [o.request_id for o in out] == sorted({o.request_id for o in out}, key=[o.request_id for o in out].index)
    assert _tokens(out) == _tokens(roomy.generate(PROMPTS, params))
    assert tight.engine.block_manager.num_free == 16


def test_abort_frees_pages(tiny_model_dir):
    llm = LLM(tiny_model_dir, **MSA_TINY)
    engine = llm.engine
    free = engine.block_manager.num_free
    rid = engine.add_request(PROMPTS[0], SamplingParams(max_tokens=100))
    engine.step()
    assert engine.block_manager.num_free < free
    out = engine.abort_request(rid)
    assert out.finished and out.outputs[0].finish_reason == "abort"
    assert engine.block_manager.num_free == free
    assert not engine.has_unfinished()


def test_seeded_sampling_repeats(llm):
    params = SamplingParams(temperature=1.0, top_p=0.9, top_k=50, seed=1234, max_tokens=16, ignore_eos=True)
    first = _tokens(llm.generate(PROMPTS, params))
    # the same seeds, batched with other traffic, give the same tokens
    again = _tokens(llm.generate(PROMPTS + PROMPTS[:2], [params] * 4 + [SamplingParams(max_tokens=5)] * 2))[:4]
    assert first == again
    other = _tokens(llm.generate(PROMPTS, SamplingParams(temperature=1.0, seed=99, max_tokens=16, ignore_eos=True)))
    assert other != first


def test_stop_strings_are_not_leaked(llm):
    full = llm.generate(PROMPTS[1], GREEDY)[0].outputs[0].text
    assert len(full) > 10
    stop = full[5:9]
    out = llm.generate(PROMPTS[1], SamplingParams(temperature=0.0, max_tokens=24, stop=[stop]))[0].outputs[0]
    assert out.finish_reason == "stop"
    assert out.text == full[: full.find(stop)]
    assert stop not in out.text


def test_n_logprobs_and_stop_token_ids(llm):
    out = llm.generate(
        "Hello", SamplingParams(temperature=0.8, n=3, seed=5, max_tokens=6, logprobs=2, ignore_eos=True)
    )[0]
    assert [c.index for c in out.outputs] == [0, 1, 2]
    for c in out.outputs:
        assert len(c.logprobs) == len(c.token_ids) == 6
        assert all(entry["logprob"] <= 0 and len(entry["top"]) == 2 for entry in c.logprobs)
    first = llm.generate("Hello", GREEDY)[0].outputs[0].token_ids
    stopped = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=24, stop_token_ids=[first[3]]))[0]
    assert stopped.outputs[0].finish_reason == "stop"
    assert stopped.outputs[0].token_ids == first[: first.index(first[3]) + 1]


def test_length_finish(llm):
    out = llm.generate("Hello", SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True))[0].outputs[0]
    assert out.finish_reason == "length" and len(out.token_ids) == 3


@pytest.mark.parametrize(
    "kwargs, field",
    [
        (dict(temperature=-0.1), "temperature"),
        (dict(temperature=3), "temperature"),
        (dict(top_p=0.0), "top_p"),
        (dict(top_k=-1), "top_k"),
        (dict(min_p=1.5), "min_p"),
        (dict(max_tokens=0), "max_tokens"),
        (dict(n=0), "n"),
        (dict(presence_penalty=5), "presence_penalty"),
        (dict(repetition_penalty=0), "repetition_penalty"),
        (dict(logprobs=50), "logprobs"),
        (dict(stop=[""]), "stop"),
    ],
)
def test_bad_sampling_values_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**kwargs)


def test_bad_requests_do_not_hurt_others(llm):
    engine = llm.engine
    good = engine.add_request(PROMPTS[0], GREEDY)
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("", GREEDY)
    with pytest.raises(ValueError, match=r"max_model_len=512"):
        engine.add_request(PROMPTS[0], SamplingParams(max_tokens=600))
    with pytest.raises(ValueError, match="token ids"):
        engine.add_request([10**9], GREEDY)
    outputs = []
    while engine.has_unfinished():
        outputs += [o for o in engine.step() if o.finished]
    assert [o.request_id for o in outputs] == [good]
    assert len(outputs[0].outputs[0].token_ids) == 24


def test_bad_config_and_model_path():
    from m3.config import Config

    with pytest.raises(ValueError, match="score"):
        Config(score="max")
    with pytest.raises(ValueError, match="block_size"):
        Config(block_size=0)
    with pytest.raises(FileNotFoundError, match="/no/such/model"):
        LLM("/no/such/model")


def test_degenerate_sampling_values_do_not_break_the_step(llm):
    """Regression: a temperature of 5e-324 once overflowed the logits and killed the engine for everyone."""
    with pytest.raises(ValueError, match="repetition_penalty"):
        SamplingParams(repetition_penalty=5e-324)
    tiny = SamplingParams(temperature=5e-324, max_tokens=4, ignore_eos=True)
    assert tiny.is_greedy
    out = llm.generate(["Hello", "Hi"], [tiny, SamplingParams(temperature=1e-3, max_tokens=4, ignore_eos=True)])
    assert out[0].outputs[0].token_ids == llm.generate("Hello", GREEDY)[0].outputs[0].token_ids[:4]
    assert len(out[1].outputs[0].token_ids) == 4
