"""Helpers shared by the benchmarks: percentiles, a process's RSS, ngircd without its flood
penalty, the bot under twistd, and a blocking IRC line client (``LineClient``)."""

from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
# The processes a benchmark starts (the bot under twistd, servers) import this source tree
# too, not whatever copy of mup is installed: a benchmark measures the code beside it.
if os.environ.get("PYTHONPATH", "").split(os.pathsep)[0] != str(ROOT):
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)

from mup.config import dumps as toml_text  # noqa: E402
from mup.testing.ircclient import LineClient  # noqa: E402
from mup.testing.ngircd import Ngircd  # noqa: E402
from mup.testing.process import ServerProcess  # noqa: E402

__all__ = ["LineClient", "ROOT", "TWISTD", "Ngircd", "ServerProcess", "fmt_ms", "percentiles",
           "rss_mb", "start_bot", "start_ngircd", "toml_text"]

TWISTD = [sys.executable, "-c",
          "import sys; sys.argv[0] = 'twistd'; from twisted.scripts.twistd import run; run()"]


def percentiles(samples: list[float]) -> dict[str, float]:
    """p50, p90, p99, mean, min and max of ``samples`` (any unit)."""
    ordered = sorted(samples)

    def pct(p: float) -> float:
        return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]

    return {"p50": pct(50), "p90": pct(90), "p99": pct(99), "mean": statistics.fmean(ordered),
            "min": ordered[0], "max": ordered[-1], "n": float(len(ordered))}


def fmt_ms(stats: dict[str, float]) -> str:
    """``p50 0.41 ms  p90 ...`` from seconds."""
    return "  ".join(f"{k} {stats[k] * 1000:.3f} ms" for k in ("p50", "p90", "p99", "mean"))


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (Linux /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def start_ngircd(directory: Path, fast: bool = True) -> Ngircd:
    """A running ngircd; ``fast`` sets MaxPenaltyTime = 0 so ngircd's own 1 s flood penalty
    does not dominate the figures (../shared/notes/irc-servers.md)."""
    return Ngircd(directory, max_penalty_time=0 if fast else None).start()


def start_bot(directory: Path, config: dict[str, dict[str, Any]]) -> ServerProcess:
    """``twistd -n mup --config FILE`` on ``config``, not waited for."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "mup.toml"
    path.write_text(toml_text(config))
    return ServerProcess([*TWISTD, "-n", "--pidfile=", "--logfile=-", "mup", "--config",
                          str(path)], directory / "mup.log", cwd=ROOT)


_KANNEL_MO_LUA = r"""
n = 0
prefix = "p"
threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("prefix", "RUN" .. "t" .. threads)
end
function request()
  n = n + 1
  return wrk.format("GET", "/kannel/mo?from=%2B447911123456&to=4242&charset=UTF-8&coding=0" ..
    "&token=TOKEN&text=TEXT" .. n .. "&id=" .. prefix .. "-" .. n)
end
"""


def kannel_mo_lua(token: str, text: str = "bench+message+") -> str:
    """A wrk script posting Kannel MOs with ids of their own: replace ``RUN`` with a run id
    before each run (wrk's Lua random numbers repeat from run to run, so a second run of the
    same script would be all duplicates and never touch the disk)."""
    return _KANNEL_MO_LUA.replace("TOKEN", token).replace("TEXT", text)
