"""`m3` command line: generate, chat, and the sub-commands of the server, agent cluster and evaluation.

Engine and sampling flags are generated from the Config and SamplingParams dataclasses, never listed by hand.
"""

import argparse
import dataclasses
import sys
import time
import types
import typing

from m3.config import Config
from m3.sampling_params import SamplingParams

_CLI_SAMPLING_DEFAULTS = {"temperature": 0.7, "max_tokens": 512}


def add_dataclass_flags(parser: argparse.ArgumentParser, cls, title: str, defaults: dict | None = None):
    """One --flag per dataclass field, typed from its annotation, help from its metadata."""
    group = parser.add_argument_group(title)
    hints = typing.get_type_hints(cls)
    defaults = defaults or {}
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        kind = _base_type(hints[f.name])
        default = defaults.get(f.name, f.default)
        help_text = f"{f.metadata['help']} (default: {default!r})"
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif kind is list and f.name == "stop":
            group.add_argument(flag, action="append", default=None, help=help_text + "; repeat for several")
        elif kind in (list, tuple):
            group.add_argument(flag, type=_int_list, default=None, help=help_text + "; comma-separated")
        else:
            group.add_argument(flag, type=kind, default=None, help=help_text)


def dataclass_from_args(cls, args: argparse.Namespace, defaults: dict | None = None):
    values = dict(defaults or {})
    values.update(
        {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    )
    return cls(**values)


def _base_type(hint):
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return typing.get_origin(hint) or hint


def _int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


# -- generate / chat --
def _stream(engine, prompt, params: SamplingParams, out=sys.stdout) -> tuple[str, int, float]:
    """Run one request to the end, printing text as it is produced. Returns (text, tokens, seconds)."""
    start = time.perf_counter()
    rid = engine.add_request(prompt, params)
    final = None
    try:
        while engine.has_unfinished():
            for o in engine.step():
                if o.request_id != rid:
                    continue
                out.write(o.outputs[0].delta_text)
                out.flush()
                final = o
    except KeyboardInterrupt:
        final = engine.abort_request(rid)
        out.write(" [interrupted]")
    out.write("\n")
    return final.outputs[0].text, len(final.outputs[0].token_ids), time.perf_counter() - start


def _print_stats(engine, tokens: int, seconds: float):
    share = engine.runner.selected_share()
    msa = f", MSA read {share:.0%} of blocks" if share is not None else ""
    print(f"[{tokens} tokens in {seconds:.1f}s, {tokens / max(seconds, 1e-9):.1f} tok/s{msa}]", file=sys.stderr)


def cmd_generate(args) -> int:
    from m3.engine.llm_engine import LLMEngine

    config = dataclass_from_args(Config, args)
    params = dataclass_from_args(SamplingParams, args, _CLI_SAMPLING_DEFAULTS)
    engine = LLMEngine(config)
    prompt = args.prompt
    if args.chat:
        text = engine.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
    _, tokens, seconds = _stream(engine, prompt, params)
    if args.stats:
        _print_stats(engine, tokens, seconds)
    return 0


def cmd_chat(args) -> int:
    from m3.engine.llm_engine import LLMEngine

    config = dataclass_from_args(Config, args)
    params = dataclass_from_args(SamplingParams, args, _CLI_SAMPLING_DEFAULTS)
    print("loading model ...", file=sys.stderr)
    engine = LLMEngine(config)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history = list(system)
    pending = [args.message] if args.message else []
    interactive = sys.stdin.isatty()
    if interactive or not pending:
        print("m3 chat: /reset clears the conversation, /exit quits.", file=sys.stderr)
    while True:
        if pending:
            text = pending.pop(0)
            print(f"you> {text}")
        else:
            try:
                text = input("you> ")
            except EOFError:
                return 0
        text = text.strip()
        if text == "/exit":
            return 0
        if text == "/reset":
            history = list(system)
            print("[conversation cleared]", file=sys.stderr)
            continue
        if not text:
            continue
        history.append({"role": "user", "content": text})
        text = engine.tokenizer.apply_chat_template(history, add_generation_prompt=True)
        prompt = engine.tokenizer.encode(text, add_special_tokens=False)
        sys.stdout.write("m3> ")
        try:
            reply, tokens, seconds = _stream(engine, prompt, params)
        except ValueError as exc:  # e.g. the conversation outgrew the context
            print(f"error: {exc}", file=sys.stderr)
            history.pop()
            continue
        history.append({"role": "assistant", "content": reply})
        if args.stats:
            _print_stats(engine, tokens, seconds)
        if not interactive and not pending:
            return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="m3", description="m3: inference engine with MSA sparse attention")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="complete one prompt, streaming the output")
    gen.add_argument("prompt")
    gen.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    gen.add_argument("--stats", action="store_true", help="print tokens/s and MSA sparsity to stderr")
    add_dataclass_flags(gen, Config, "engine (Config)")
    add_dataclass_flags(gen, SamplingParams, "sampling (SamplingParams)", _CLI_SAMPLING_DEFAULTS)
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="interactive chat that keeps the conversation (/reset, /exit)")
    chat.add_argument("message", nargs="?", help="first message (then reads stdin while it is a terminal)")
    chat.add_argument("--system", default="", help="system prompt (default: the chat template's own)")
    chat.add_argument("--stats", action="store_true", help="print tokens/s and MSA sparsity to stderr")
    add_dataclass_flags(chat, Config, "engine (Config)")
    add_dataclass_flags(chat, SamplingParams, "sampling (SamplingParams)", _CLI_SAMPLING_DEFAULTS)
    chat.set_defaults(func=cmd_chat)

    from m3.server.cli import add_server_parsers

    add_server_parsers(sub)  # serve, keys create|list|revoke, usage, analyze

    from m3.code.cli import add_code_parser
    from m3.eval.coding import add_coding_parsers
    from m3.eval.longctx.cli import add_longctx_parser

    add_code_parser(sub)  # m3 code run|resume|status|review|tests|docs|fix
    eval_parser = sub.add_parser("eval", help="benchmarks: coding (humaneval, mbpp) and long context (longctx)")
    eval_sub = eval_parser.add_subparsers(dest="eval_command", required=True)
    add_coding_parsers(eval_sub)
    add_longctx_parser(eval_sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"m3: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
