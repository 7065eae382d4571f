"""Reading a long-context run: a rich table (task x length, one column per variant, deltas against the first
variant) and a heat-map PNG (length x depth accuracy, one panel per depth task and variant). matplotlib is optional:
without it the PNG is skipped with a note.
"""

from rich.table import Table

from m3.eval.longctx.runner import summarize


def merge_records(records: list[dict]) -> dict:
    """One record from runs of the same suite over different grids (e.g. one run per length): rows are pooled, the
    summary recomputed, and each run's grid, timings and machine kept under "parts"."""
    merged = {k: v for k, v in records[0].items() if k not in ("rows", "summary", "seconds", "grid", "total_seconds")}
    merged["variants"] = {}
    for r in records:
        merged["variants"].update(r["variants"])
    merged["rows"] = [row for r in records for row in r["rows"]]
    merged["summary"] = summarize(merged["rows"])
    merged["parts"] = [{k: r.get(k) for k in ("grid", "seconds", "total_seconds", "date", "command")} for r in records]
    return merged


def _cells(record: dict) -> dict[tuple, dict]:
    return {(c["variant"], c["task"], c["length"], c["depth"]): c for c in record["summary"]}


def _lengths(record: dict, task: str) -> list:
    return sorted({c["length"] for c in record["summary"] if c["task"] == task and c["length"] != "all"})


def results_table(record: dict) -> Table:
    """Accuracy (%) per task and length for each variant; Δ columns compare each variant with the first."""
    variants = list(record["variants"])
    ref = variants[0]
    cells = _cells(record)
    table = Table(title="long-context accuracy (%)", show_lines=False)
    table.add_column("task", no_wrap=True)
    table.add_column("length", justify="right")
    table.add_column("tokens", justify="right")
    for v in variants:
        table.add_column(v, justify="right")
    for v in variants[1:]:
        table.add_column(f"Δ {v}", justify="right")
    tasks = list(dict.fromkeys(c["task"] for c in record["summary"]))
    for task in tasks:
        lengths = _lengths(record, task)
        covered = [{n for n in lengths if (v, task, n, "all") in cells} for v in variants]
        for length in [*lengths, "all"]:
            row = [cells.get((v, task, length, "all")) for v in variants]
            present = [c for c in row if c is not None]
            if not present:
                continue
            accs = [c["accuracy"] if c else None for c in row]
            # pooled rows compare only variants run over the same lengths
            same = [length != "all" or covered[i] == covered[0] for i in range(1, len(variants))]
            deltas = [_delta(a, accs[0]) if ok else "-" for a, ok in zip(accs[1:], same)]
            tokens = "" if length == "all" else f"{present[0]['mean_tokens']:,}"
            label = "all" if length == "all" else f"{length:,}"
            table.add_row(task, label, tokens, *(_fmt(a) for a in accs), *deltas, end_section=length == "all")
    worst = worst_tasks(record)
    if worst:
        table.caption = (
            "largest drop vs " + ref + ": " + "; ".join(f"{v}: {t} ({d:+.1f})" for v, (t, d) in worst.items())
        )
    return table


def worst_tasks(record: dict) -> dict[str, tuple[str, float]]:
    """Per non-reference variant: the (task, length) cell with the largest accuracy drop against the first variant,
    as ("task @ length", delta)."""
    variants = list(record["variants"])
    cells = _cells(record)
    out = {}
    for v in variants[1:]:
        drops = []
        for (var, task, length, depth), c in cells.items():
            ref = cells.get((variants[0], task, length, depth))
            if var == v and depth == "all" and length != "all" and ref is not None:
                drops.append((c["accuracy"] - ref["accuracy"], f"{task} @ {length:,}"))
        if drops:
            delta, name = min(drops)
            out[v] = (name, delta)
    return out


def _fmt(acc: float | None) -> str:
    return "-" if acc is None else f"{acc:.1f}"


def _delta(acc: float | None, ref: float | None) -> str:
    if acc is None or ref is None:
        return "-"
    d = acc - ref
    color = "green" if d >= 0 else ("yellow" if d >= -2 else "red")
    return f"[{color}]{d:+.1f}[/{color}]"


def save_heatmap(record: dict, path: str) -> str | None:
    """Length x depth accuracy panels (rows: tasks with a depth, columns: variants). Returns the path, or None when
    matplotlib is absent or no task has a depth."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cells = _cells(record)
    variants = list(record["variants"])
    tasks = list(dict.fromkeys(c["task"] for c in record["summary"] if c["depth"] != "all"))
    if not tasks:
        return None
    fig, axes = plt.subplots(
        len(tasks),
        len(variants),
        figsize=(1.2 + 2.6 * len(variants), 0.6 + 2.5 * len(tasks)),
        squeeze=False,
        layout="constrained",
    )
    image = None
    for i, task in enumerate(tasks):
        lengths = _lengths(record, task)
        depths = sorted({c["depth"] for c in record["summary"] if c["task"] == task and c["depth"] != "all"})
        for j, v in enumerate(variants):
            ax = axes[i][j]
            grid = [[_acc(cells.get((v, task, length, d))) for length in lengths] for d in depths]
            image = ax.imshow(grid, cmap="RdYlGn", vmin=0, vmax=100, aspect="auto")
            for y, line in enumerate(grid):
                for x, acc in enumerate(line):
                    ax.text(x, y, "-" if acc != acc else f"{acc:.0f}", ha="center", va="center", fontsize=8)
            ax.set_xticks(range(len(lengths)), [_short(n) for n in lengths], fontsize=8)
            ax.set_yticks(range(len(depths)), [f"{100 * d:.0f}%" for d in depths] if j == 0 else [], fontsize=8)
            ax.set_title(f"{task} · {v}", fontsize=9)
            if j == 0:
                ax.set_ylabel("depth")
            if i == len(tasks) - 1:
                ax.set_xlabel("tokens")
    fig.colorbar(image, ax=axes, shrink=0.6, label="accuracy (%)")
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _acc(cell: dict | None) -> float:
    return float("nan") if cell is None else cell["accuracy"]


def _short(n: int) -> str:
    if n >= 1 << 20 and n % (1 << 20) == 0:
        return f"{n >> 20}M"
    return f"{n >> 10}K" if n >= 1024 and n % 1024 == 0 else str(n)
