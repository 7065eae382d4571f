"""Operator commands: `m3 serve`, `m3 keys create|list|revoke`, `m3 usage`, `m3 analyze`.

`add_server_parsers(subparsers)` registers them on the `m3` command (each sets `func(args) -> int`); the same
parsers run as `python -m m3.server ...`. Engine flags of `serve` are generated from Config.
"""

import argparse
import datetime as dt
import os
import sys


def add_server_parsers(subparsers) -> None:
    from m3.cli import add_dataclass_flags
    from m3.config import Config

    serve = subparsers.add_parser("serve", help="run the OpenAI-compatible API server")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1)")
    serve.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    _database_flag(serve)
    serve.add_argument("--plans", default=None, help="TOML file overriding or adding plans (see m3.server.plans)")
    serve.add_argument("--served-model-name", default=None, help="model id clients send (default: from the file)")
    serve.add_argument("--no-embeddings", action="store_true", help="do not load the embedding model")
    serve.add_argument(
        "--max-concurrent-seqs",
        type=int,
        default=None,
        help="sequences admitted to the engine at once, by plan priority (default: max_num_seqs)",
    )
    serve.add_argument("--default-max-tokens", type=int, default=4096, help="max_tokens when a request omits it")
    serve.add_argument("--keepalive-s", type=float, default=10.0, help="SSE keep-alive comment after this idle time")
    serve.add_argument(
        "--checkpoint-s",
        type=float,
        default=5.0,
        help="how often a running request's token count is written to the ledger (crash billing)",
    )
    serve.add_argument("--log-level", default="info", help="uvicorn log level (default: info)")
    add_dataclass_flags(serve, Config, "engine (Config)")
    serve.set_defaults(func=cmd_serve)

    keys = subparsers.add_parser("keys", help="create, list and revoke API keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="create a key (printed once; only its hash is stored)")
    create.add_argument("--name", required=True, help="a unique name for the key")
    create.add_argument("--plan", default="plus", help="plus | max | ultra, or a plan from --plans (default: plus)")
    create.add_argument("--plans", default=None, help="TOML file with extra plans")
    _database_flag(create)
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="list keys with today's usage")
    listing.add_argument("--plans", default=None, help="TOML file with extra plans")
    _database_flag(listing)
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by name (takes effect on its next request)")
    revoke.add_argument("name")
    _database_flag(revoke)
    revoke.set_defaults(func=cmd_keys_revoke)

    usage = subparsers.add_parser("usage", help="token usage per key and day, from the ledger")
    usage.add_argument("--key", default=None, help="only this key (by name)")
    usage.add_argument("--days", type=int, default=7, help="how many days back, today included (default: 7)")
    _database_flag(usage)
    usage.set_defaults(func=cmd_usage)

    analyze = subparsers.add_parser("analyze", help="ask a question about a file or a whole repository")
    analyze.add_argument("path", help="a file or a folder (.gitignore respected, binaries skipped)")
    analyze.add_argument("task", help="what to do with it, e.g. 'find security bugs'")
    analyze.add_argument("--base-url", default=None, help="server URL (default: $M3_BASE_URL or 127.0.0.1:8000/v1)")
    analyze.add_argument("--api-key", default=None, help="API key (default: $M3_API_KEY)")
    analyze.add_argument("--model", default="default")
    analyze.add_argument("--max-tokens", type=int, default=1024)
    analyze.add_argument("--temperature", type=float, default=0.2)
    analyze.set_defaults(func=cmd_analyze)


def _database_flag(parser):
    parser.add_argument(
        "--database",
        default=None,
        help="SQLAlchemy URL of the ledger (default: $M3_DATABASE_URL, else a SQLite file in the user data dir)",
    )


def _ledger(args):
    from m3.server.ledger import Ledger

    return Ledger(args.database)


def cmd_serve(args) -> int:
    import logging

    import uvicorn

    from m3.cli import dataclass_from_args
    from m3.config import Config
    from m3.server.app import _name_from_path, create_app
    from m3.server.plans import load_plans

    config = dataclass_from_args(Config, args)
    plans = load_plans(args.plans)

    def load_engine():
        from m3.engine.async_engine import AsyncEngine

        return AsyncEngine(config)

    def load_embedder():
        from m3.server.embeddings import Embedder

        return Embedder()

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    app = create_app(
        db_url=args.database,
        engine_factory=load_engine,
        embedder_factory=None if args.no_embeddings else load_embedder,
        plans=plans,
        model_name=args.served_model_name or _name_from_path(config.model),
        default_max_tokens=args.default_max_tokens,
        max_concurrent_seqs=args.max_concurrent_seqs,
        keepalive_s=args.keepalive_s,
        checkpoint_s=args.checkpoint_s,
    )
    print(
        f"m3 serve: http://{args.host}:{args.port}/v1 (ledger {app.state.m3.ledger.url}); the model loads "
        f"in the background, GET /health turns 200 when ready",
        file=sys.stderr,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def cmd_keys_create(args) -> int:
    from m3.server.plans import load_plans

    plans = load_plans(args.plans)
    if args.plan not in plans:
        raise ValueError(f"unknown plan {args.plan!r}; choose from {', '.join(plans)}")
    ledger = _ledger(args)
    record, key = ledger.create_key(args.name, args.plan)
    print(key)
    print(f"created key {record.name!r} on plan {record.plan}; it is shown only once, store it now", file=sys.stderr)
    return 0


def cmd_keys_list(args) -> int:
    from m3.server.plans import load_plans

    plans = load_plans(args.plans)
    ledger = _ledger(args)
    rows = []
    for k in ledger.list_keys():
        plan = plans.get(k.plan)
        quota = "unlimited" if plan is None or plan.tokens_per_day is None else f"{plan.tokens_per_day:,}"
        rows.append(
            [
                k.name,
                k.plan,
                f"m3-{k.key_id}-...",
                _date(k.created_at),
                "revoked " + _date(k.revoked_at) if k.revoked_at else "active",
                f"{ledger.used_today(k):,}",
                quota,
            ]
        )
    print(table(["name", "plan", "key", "created", "status", "used today", "quota/day"], rows))
    return 0


def cmd_keys_revoke(args) -> int:
    record = _ledger(args).revoke_key(args.name)
    print(f"revoked key {record.name!r} ({_date(record.revoked_at)})")
    return 0


def cmd_usage(args) -> int:
    rows = _ledger(args).usage_rows(args.key, args.days)
    body = [
        [
            r["day"],
            r["name"],
            r["plan"],
            f"{r['requests']:,}",
            f"{r['prompt_tokens']:,}",
            f"{r['completion_tokens']:,}",
            f"{r['billed_tokens']:,}",
        ]
        for r in rows
    ]
    if rows:
        body.append(
            [
                "total",
                "",
                "",
                f"{sum(r['requests'] for r in rows):,}",
                f"{sum(r['prompt_tokens'] for r in rows):,}",
                f"{sum(r['completion_tokens'] for r in rows):,}",
                f"{sum(r['billed_tokens'] for r in rows):,}",
            ]
        )
    print(table(["day", "key", "plan", "requests", "prompt", "completion", "billed"], body))
    return 0


def cmd_analyze(args) -> int:
    from m3.analyze import pack_path
    from m3.client import M3, ContextTooLongError, M3Error

    packed = pack_path(args.path)
    print(
        f"packed {len(packed.files)} file(s), {packed.num_chars:,} characters"
        + (f"; skipped {len(packed.skipped)} (binary or too large)" if packed.skipped else ""),
        file=sys.stderr,
    )
    client = M3(api_key=args.api_key, base_url=args.base_url, model=args.model)
    counted = {}

    def progress(p):
        if p.phase == "count":
            print(f"prompt: {p.done:,} tokens of the model's {p.total:,}-token context", file=sys.stderr)
        elif p.phase == "prefill":
            print(f"\r[prefill {p.done:,}/{p.total:,} tokens]", end="", file=sys.stderr, flush=True)

    try:
        stream = client.analyze(
            args.task,
            context=packed.text,
            max_tokens=args.max_tokens,
            temperature=args.temperature,
            stream=True,
            on_progress=progress,
        )
        for chunk in stream:
            for c in chunk.choices:
                sys.stdout.write(c.delta.content or "")
                sys.stdout.flush()
            if chunk.usage is not None:
                counted["usage"] = chunk.usage
    except ContextTooLongError as exc:
        print(f"m3 analyze: does not fit: {exc}", file=sys.stderr)
        return 1
    except M3Error as exc:
        print(f"m3 analyze: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write("\n")
    if "usage" in counted:
        u = counted["usage"]
        print(f"[{u.prompt_tokens:,} prompt + {u.completion_tokens:,} completion tokens]", file=sys.stderr)
    return 0


def table(headers: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def _date(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M") if ts else ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m m3.server", description="m3 server and operator commands")
    add_server_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"m3: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
