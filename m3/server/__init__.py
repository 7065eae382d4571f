"""m3.server: the OpenAI-compatible API (FastAPI + uvicorn) with API keys, plans, daily quotas and a usage ledger.

`create_app(engine, db_url)` builds the app (see app.py); `python -m m3.server serve` or `m3 serve` runs it.
"""
