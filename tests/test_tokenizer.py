"""Tokenizer against llama.cpp's pre-tokenizer rules and transformers' tokenizer for the same GGUF.

NOTE on a deviation: for `tokenizer.ggml.pre == "smollm"` llama.cpp splits every \\p{N} character off first and runs
GPT-2's regex on the rest; transformers' GGUF converter (5.x) uses GPT-2's regex alone. Digits still come out one per
token (the vocabulary has no multi-digit tokens), but whitespace before a digit differs: "x  1" is
["x", "ĠĠ", "1"] in llama.cpp (and in SmolLM2's own tokenizer.json) and ["x", "Ġ", "Ġ", "1"] in transformers.
We follow llama.cpp; the tests check against transformers where the two agree and against llama.cpp's rule always.
"""

import json
import os

import pytest
import regex
from gguf import GGUFReader, GGUFWriter
from transformers.convert_slow_tokenizer import bytes_to_unicode

from m3.tokenizer import Tokenizer

AGREE = [
    "",
    "Hello, world!",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # slow\n",
    "    indented = [i ** 2 for i in range(10)]\n\tif x:\n\t\tpass",
    "12345 3.14159 1,000,000 2024-01-01T12:00:00Z 0x1F",
    "price: $9.99!!! (50% off) {a: [1, 2]}",
    "  leading and trailing  ",
    "tabs\tand\n\nnewlines\r\n  \n",
    "don't I'll we've THEY'RE",
    "héllo wörld café naïve Ελληνικά русский",
    "日本語のテキスト 中文 한국어",
    "emoji 😀🎉👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>m3<file_sep>x",
]
DEVIATE = {  # whitespace before a number: llama.cpp's pieces, asserted literally
    "x  1": ["x", "ĠĠ", "1"],
    "a   42b": ["a", "ĠĠĠ", "4", "2", "b"],
    "  1  2   3": ["ĠĠ", "1", "ĠĠ", "2", "ĠĠĠ", "3"],
}
CONVERSATION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is 2+2? Answer with a digit."},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    return Tokenizer.from_gguf(gguf_path)


@pytest.fixture(scope="module")
def llama_cpp_encode(gguf_path, hf_gguf_tokenizer):
    """llama.cpp's tokenize() for pre "smollm", emulated: specials whole, then "\\p{N}" splits, then GPT-2's regex,
    then BPE on each piece alone (transformers' BPE over the same merges)."""
    reader = GGUFReader(gguf_path)
    tokens, types = (reader.fields[f"tokenizer.ggml.{k}"].contents() for k in ("tokens", "token_type"))
    specials = {t: i for i, (t, k) in enumerate(zip(tokens, types)) if k == 3}
    special_split = regex.compile("(" + "|".join(map(regex.escape, sorted(specials, key=len, reverse=True))) + ")")
    gpt2 = regex.compile(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")

    def encode(text):
        ids = []
        for part in special_split.split(text):
            if part in specials:
                ids.append(specials[part])
                continue
            for segment in regex.split(r"(\p{N})", part):
                for piece in gpt2.findall(segment):
                    ids += hf_gguf_tokenizer.encode(piece, add_special_tokens=False)
        return ids

    return encode


@pytest.mark.parametrize("text", AGREE + list(DEVIATE) + ["٣٤٥ arabic digits ²½ ⅷ"])
def test_encode_follows_llama_cpp(tokenizer, llama_cpp_encode, text):
    assert tokenizer.encode(text) == llama_cpp_encode(text)


@pytest.mark.parametrize("text", AGREE)
def test_encode_equals_transformers(tokenizer, hf_gguf_tokenizer, text):
    assert tokenizer.encode(text) == hf_gguf_tokenizer(text)["input_ids"]


@pytest.mark.parametrize("text", list(DEVIATE))
def test_space_before_digit_follows_llama_cpp(tokenizer, text):
    assert [tokenizer.id_to_token(i) for i in tokenizer.encode(text)] == DEVIATE[text]


def test_every_digit_is_its_own_token(tokenizer):
    ids = tokenizer.encode("3.14159 2718281828 x99 ٣٤٥")
    digit_tokens = [t for t in map(tokenizer.id_to_token, ids) if any(c.isdigit() for c in t)]
    assert digit_tokens and all(len(t) == 1 for t in digit_tokens if t.isascii())


@pytest.mark.parametrize("text", AGREE + list(DEVIATE))
def test_decode_round_trips(tokenizer, hf_gguf_tokenizer, text):
    ids = tokenizer.encode(text)
    assert tokenizer.decode(ids, skip_special_tokens=False) == text
    assert tokenizer.decode(ids) == hf_gguf_tokenizer.decode(ids, skip_special_tokens=True)


def test_special_tokens_and_stops(tokenizer):
    assert (tokenizer.id_to_token(tokenizer.eos_token_id), tokenizer.id_to_token(tokenizer.bos_token_id)) == (
        "<|im_end|>",
        "<|im_start|>",
    )
    assert {tokenizer.eos_token_id, 0} <= tokenizer.stop_token_ids  # <|im_end|>, <|endoftext|>
    assert tokenizer.vocab_size == 49152
    # the file says add_bos_token = false: no BOS even with add_special_tokens
    assert tokenizer.encode("hi") == tokenizer.encode("hi", add_special_tokens=False) == [6004]
    assert tokenizer.decode(tokenizer.encode("<|im_start|>hi<|im_end|>")) == "hi"


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_equals_transformers(tokenizer, hf_gguf_tokenizer, add_generation_prompt):
    prompt = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=add_generation_prompt)
    kw = dict(add_generation_prompt=add_generation_prompt)
    assert prompt == hf_gguf_tokenizer.apply_chat_template(CONVERSATION, tokenize=False, **kw)
    ref_ids = hf_gguf_tokenizer.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, **kw)["input_ids"]
    assert tokenizer.encode(prompt, add_special_tokens=False) == ref_ids


def test_hf_folder_template_from_tokenizer_config(tmp_path, hf_gguf_tokenizer):
    # tokenizer_config.json carries the template (older transformers) and asks for BOS; helpers as transformers has
    hf_gguf_tokenizer.save_pretrained(tmp_path)
    os.remove(tmp_path / "chat_template.jinja")
    template = (
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}"
        "{{ m | tojson }}{{ eos_token }}{% endfor %}{% if add_generation_prompt %}>{% endif %}"
    )
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config.update(chat_template=[{"name": "default", "template": template}], add_bos_token=True)
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    tok = Tokenizer.from_hf_folder(str(tmp_path))
    messages = [{"role": "user", "content": "<b>café</b>"}]
    expected = '<|im_start|>{"role": "user", "content": "<b>café</b>"}<|im_end|>>'
    assert tok.apply_chat_template(messages) == expected
    with pytest.raises(Exception, match="no tools"):
        tok.apply_chat_template([{"role": "tool", "content": "x"}])
    assert tok.encode("hi") == [tok.bos_token_id, 6004]
    assert tok.encode("hi", add_special_tokens=False) == [6004]


def write_tokenizer_gguf(path, model="gpt2", pre="smollm"):
    tokens = list(bytes_to_unicode().values()) + ["<|im_end|>"]
    w = GGUFWriter(path, "llama")
    w.add_tokenizer_model(model)
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types([1] * 256 + [3])
    w.add_token_merges([])
    w.add_eos_token_id(256)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_without_chat_template(tmp_path):
    write_tokenizer_gguf(str(tmp_path / "t.gguf"))
    tok = Tokenizer.from_gguf(str(tmp_path / "t.gguf"))
    assert tok.encode("ab<|im_end|>") == [tok.encode("a")[0], tok.encode("b")[0], 256]
    with pytest.raises(ValueError, match="no chat template"):
        tok.apply_chat_template(CONVERSATION)


@pytest.mark.parametrize(
    "model, pre, match", [("llama", "default", r"'llama'.*gpt2"), ("gpt2", "odd", r"'odd'.*smollm")]
)
def test_unsupported_gguf_tokenizer(tmp_path, model, pre, match):
    write_tokenizer_gguf(str(tmp_path / "t.gguf"), model=model, pre=pre)
    with pytest.raises(ValueError, match=match):
        Tokenizer.from_gguf(str(tmp_path / "t.gguf"))
