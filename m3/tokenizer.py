"""Tokenizer: text <-> token ids and chat templates, on the `tokenizers` library.

From a GGUF we rebuild llama.cpp's tokenizer: byte-level BPE over the file's vocab and merges, split first by the
regex llama.cpp uses for `tokenizer.ggml.pre`, with CONTROL / USER_DEFINED tokens matched whole, and BOS/EOS added
only when the metadata asks (llama.cpp's defaults otherwise). From a HF folder, tokenizer.json is used as saved.
Chat templates render in jinja2's immutable sandbox with the helpers transformers provides.
"""

import json
import os
from datetime import datetime

import jinja2
import jinja2.ext
from gguf import GGUFReader
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as Backend

# llama.cpp's pre-tokenizer regexes (src/llama-vocab.cpp), by `tokenizer.ggml.pre`
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell")  # "\p{N}" split, then GPT-2's
_LLAMA3_PRE = ("llama-bpe", "llama3", "llama-v3")
_QWEN2_PRE = ("qwen2", "deepseek-r1-qwen")
SUPPORTED_PRE = ("gpt2", *_DIGITS_THEN_GPT2, *_LLAMA3_PRE, *_QWEN2_PRE)

# tokens that end a chat turn or a document; generation stops on them as on EOS
_END_TOKENS = ("<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|endoftext|>", "<|end_of_text|>", "<|end|>")
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types


class Tokenizer:
    """eos_token_id, bos_token_id (None when the model has none), stop_token_ids (EOS plus the chat-turn and
    document end tokens the vocabulary has), vocab_size (with added tokens), chat_template (None when absent)."""

    def __init__(
        self,
        backend: Backend,
        eos_token_id: int,
        bos_token_id: int | None = None,
        chat_template: str | None = None,
        extra_stop_token_ids: tuple[int, ...] = (),
    ):
        self._backend = backend
        self.eos_token_id = eos_token_id
        self.bos_token_id = bos_token_id
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        ends = (backend.token_to_id(t) for t in _END_TOKENS)
        self.stop_token_ids = {eos_token_id, *extra_stop_token_ids, *(i for i in ends if i is not None)}
        self.chat_template = chat_template
        self._template = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Special tokens in the text are always matched whole. add_special_tokens adds BOS/EOS where the model's
        metadata asks for them; encode a rendered chat template with False, as transformers does."""
        return self._backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> str | None:
        return self._backend.id_to_token(token_id)

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True, **kwargs) -> str:
        """Render messages ([{"role": ..., "content": ...}]) to the prompt text; kwargs reach the template
        (tools=..., enable_thinking=...)."""
        if self.chat_template is None:
            raise ValueError("this model has no chat template; use plain completion (encode the prompt) instead")
        if self._template is None:
            self._template = _compile_template(self.chat_template)
        specials = {"bos_token": self._token(self.bos_token_id), "eos_token": self._token(self.eos_token_id)}
        return self._template.render(
            messages=messages, add_generation_prompt=add_generation_prompt, **{**specials, **kwargs}
        )

    def _token(self, token_id: int | None) -> str:
        return "" if token_id is None else self._backend.id_to_token(token_id)

    # -- constructors --

    @classmethod
    def from_gguf(cls, reader_or_path) -> "Tokenizer":
        """From a GGUF's `tokenizer.*` metadata: a gguf.GGUFReader or a file path."""
        reader = GGUFReader(reader_or_path) if isinstance(reader_or_path, str | os.PathLike) else reader_or_path

        def field(key, default=None):
            f = reader.fields.get(f"tokenizer.{key}")
            return default if f is None else f.contents()

        model = field("ggml.model")
        if model != "gpt2":
            raise ValueError(
                f"unsupported GGUF tokenizer.ggml.model {model!r}; supported: gpt2 (byte-level BPE). "
                "Load the model from its Hugging Face folder instead."
            )
        pre = field("ggml.pre", "default")
        if pre not in SUPPORTED_PRE:
            raise ValueError(f"unsupported GGUF tokenizer.ggml.pre {pre!r}; supported: {', '.join(SUPPORTED_PRE)}")
        tokens, types = field("ggml.tokens"), field("ggml.token_type")
        merges = [tuple(m.split(" ")) for m in field("ggml.merges", [])]
        # NOTE: llama.cpp skips merges for a piece that is already a token, but only for the llama3 family.
        bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, ignore_merges=pre in _LLAMA3_PRE)
        backend = Backend(bpe)
        if pre in _DIGITS_THEN_GPT2:
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
            )
        elif pre == "gpt2":
            backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        else:
            split = _LLAMA3_SPLIT if pre in _LLAMA3_PRE else _QWEN2_SPLIT
            backend.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex(split), behavior="isolated"),
                    pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
                ]
            )
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens(
            [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == _CONTROL]
        )
        backend.add_tokens(
            [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == _USER_DEFINED]
        )
        eos, bos = field("ggml.eos_token_id"), field("ggml.bos_token_id")
        if eos is None:
            raise ValueError("GGUF metadata lacks tokenizer.ggml.eos_token_id")
        add_bos, add_eos = field("ggml.add_bos_token", pre in _LLAMA3_PRE), field("ggml.add_eos_token", False)
        backend.post_processor = _bos_eos_processor(bos if add_bos else None, eos if add_eos else None)
        extra = tuple(i for i in (field("ggml.eot_token_id"), field("ggml.eom_token_id")) if i is not None)
        return cls(backend, eos, bos, field("chat_template"), extra)

    @classmethod
    def from_hf_folder(cls, path: str) -> "Tokenizer":
        """From tokenizer.json (+ tokenizer_config.json, chat_template.jinja, generation_config.json if present)."""
        file = os.path.join(path, "tokenizer.json")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"{path}: missing tokenizer.json")
        backend = Backend.from_file(file)
        config = _read_json(path, "tokenizer_config.json")
        model_config, generation = _read_json(path, "config.json"), _read_json(path, "generation_config.json")

        def token_id(name):
            token = config.get(name)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else backend.token_to_id(token)

        def ids(value):
            return [value] if isinstance(value, int) else list(value or [])

        config_eos = ids(generation.get("eos_token_id")) + ids(model_config.get("eos_token_id"))
        eos = token_id("eos_token")
        eos = eos if eos is not None else next(iter(config_eos), None)
        if eos is None:
            raise ValueError(f"{path}: no eos_token in tokenizer_config.json, generation_config.json or config.json")
        bos = token_id("bos_token")
        if "add_bos_token" in config or "add_eos_token" in config:
            # transformers rebuilds the post-processor from these flags when they are given; so do we.
            bos_added = bos if config.get("add_bos_token") else None
            eos_added = eos if config.get("add_eos_token") else None
            backend.post_processor = _bos_eos_processor(bos_added, eos_added)
        return cls(backend, eos, bos, _hf_chat_template(path, config), tuple(config_eos))


def _bos_eos_processor(bos: int | None, eos: int | None):
    if bos is None and eos is None:
        return None
    # NOTE: template pieces are "name:type_id" strings; the name only keys special_tokens, so any ':'-free name works.
    names = {i: f"special_{i}" for i in (bos, eos) if i is not None}

    def template(seq: str, type_id: int) -> list[str]:
        return (
            [f"{names[i]}:{type_id}" for i in (bos,) if i is not None]
            + [f"{seq}:{type_id}"]
            + [f"{names[i]}:{type_id}" for i in (eos,) if i is not None]
        )

    return processors.TemplateProcessing(
        single=template("$A", 0),
        pair=template("$A", 0) + template("$B", 1),
        special_tokens=[(names[i], i) for i in names],
    )


def _read_json(folder: str, name: str) -> dict:
    path = os.path.join(folder, name)
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _hf_chat_template(folder: str, config: dict) -> str | None:
    jinja_file = os.path.join(folder, "chat_template.jinja")  # transformers 5 saves it beside the config
    if os.path.isfile(jinja_file):
        with open(jinja_file, encoding="utf-8") as f:
            return f.read()
    template = config.get("chat_template")
    if isinstance(template, list):  # named templates: [{"name": "default", "template": ...}, ...]
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template


def _compile_template(source: str) -> jinja2.Template:
    # Same environment and helpers as transformers' apply_chat_template, so templates render identically.
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
