"""What every benchmark result records: machine, versions, device, date."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

import jax


def environment() -> dict:
    import mscpk

    device = jax.devices()[0]
    versions = {"python": platform.python_version(), "jax": jax.__version__, "mscpk": mscpk.__version__}
    for name in ("jaxlib", "diffrax", "equinox", "numpyro"):
        try:
            versions[name] = __import__(name).__version__
        except ImportError:
            pass
    return {
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
        },
        "versions": versions,
        "device": f"{device.platform}:{device.device_kind}",
        "device_count": jax.device_count(),
        "date": time.strftime("%Y-%m-%d"),
        # "nan" lets the persistent compilation cache store solver programs (README).
        "eqx_on_error": os.environ.get("EQX_ON_ERROR", "raise"),
    }


def write_result(stem: str, result: dict) -> Path:
    """Write ``result`` to ``benchmarks/results/<stem>-<device>.json`` and say so."""
    out = Path(__file__).parent / "results" / f"{stem}-{device_tag()}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def device_tag() -> str:
    """``cpu`` or the accelerator's kind in file-name form (e.g. ``nvidia-h100-80gb-hbm3``)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return "cpu"
    return "".join(c if c.isalnum() else "-" for c in device.device_kind.lower()).strip("-")


def peak_memory_bytes() -> int | None:
    """Peak bytes in use on the first device (accelerators) or this process's own peak
    resident set (CPU).

    On Linux that is ``VmHWM`` of ``/proc/self/status``, the peak of this process's
    address space. ``getrusage``'s ``ru_maxrss`` is not: Linux carries the parent's
    resident set at fork into it, so a benchmark process started by ``suite.py`` (itself
    ~600 MiB) reported the suite's memory whatever its own (session 29,
    ``benchmarks/RESULTS.md``). Elsewhere ``ru_maxrss`` stays the fallback (bytes on
    macOS, KiB on other systems)."""
    device = jax.devices()[0]
    if device.platform != "cpu":
        stats = device.memory_stats() or {}
        return stats.get("peak_bytes_in_use")
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # given in kB
    except OSError:
        pass
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024


def timed(f, *args, repeat: int = 3) -> tuple[float, float]:
    """(first call incl. compile, median of ``repeat`` later calls) in seconds."""
    t0 = time.perf_counter()
    jax.block_until_ready(f(*args))
    first = time.perf_counter() - t0
    runs = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        jax.block_until_ready(f(*args))
        runs.append(time.perf_counter() - t0)
    runs.sort()
    return first, runs[len(runs) // 2]
