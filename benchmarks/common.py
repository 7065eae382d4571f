"""Shared by the benchmark scripts: hardware/software description and JSON result records."""

import datetime
import json
import os
import platform
import subprocess


def machine() -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor()
    info.update(cpu=cpu, cpu_count=os.cpu_count())
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        try:
            info["driver"] = subprocess.run(
                ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"], capture_output=True, text=True
            ).stdout.strip()
        except OSError:
            pass
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    return info


def write_record(name: str, record: dict, out: str | None = None) -> str:
    """Write benchmarks/results/<name>-<date>.json (or `out`) and return its path."""
    record = {"benchmark": name, "date": datetime.date.today().isoformat(), "machine": machine(), **record}
    path = out or os.path.join(os.path.dirname(__file__), "results", f"{name}-{record['date']}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(record, f, indent=2)
    return path
