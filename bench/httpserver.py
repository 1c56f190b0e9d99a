"""What the receiver's guards cost: a no-op resource served by twisted.web's plain Site and by
mup's GuardedSite (timeouts, connection cap, request-line check), loaded by ``wrk``.

    python bench/httpserver.py [--seconds 5] [--connections 16]

Prints req/s and p50/p99 for both, best of two alternated runs each, and the ratio
guarded / plain, measured in the same run.  Two shared cores: expect +-15 % between runs.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys

from mup.testing.process import free_port, port_open, wait_for


def serve(kind: str, port: int) -> None:
    from twisted.internet import reactor
    from twisted.web.resource import Resource
    from twisted.web.server import Site
    from twisted.web.static import Data

    from mup.httpserver import GuardedSite

    root = Resource()
    root.putChild(b"ok", Data(b"ok\n", "text/plain"))
    site = GuardedSite(root) if kind == "guarded" else Site(root)
    site.log = lambda request: None   # type: ignore[method-assign]  (no access log, as mup)
    reactor.listenTCP(port, site, interface="127.0.0.1")
    reactor.run()


def wrk(port: int, seconds: int, connections: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency",
                          f"http://127.0.0.1:{port}/ok"],
                         capture_output=True, text=True, check=True).stdout

    def pct(p: str) -> float:
        m = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        assert m, out
        return float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]

    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    assert rate, out
    return {"rate": float(rate.group(1)), "p50": pct("50"), "p99": pct("99")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--serve", nargs=2, metavar=("KIND", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (Debian package wrk)")
        return 1
    best: dict[str, dict[str, float]] = {}
    for kind in ("plain", "guarded") * 2:
        port = free_port()
        proc = subprocess.Popen([sys.executable, __file__, "--serve", kind, str(port)])
        try:
            wait_for(lambda p=port: port_open(p), 20, f"port {port} to open")
            wrk(port, 1, args.connections)        # warm-up
            r = wrk(port, args.seconds, args.connections)
        finally:
            proc.terminate()
            proc.wait(10)
        print(f"  {kind:8} {r['rate']:8.0f} req/s  p50 {r['p50']:6.2f} ms  p99 {r['p99']:6.2f} ms",
              flush=True)
        if kind not in best or r["rate"] > best[kind]["rate"]:
            best[kind] = r
    ratio = best["guarded"]["rate"] / best["plain"]["rate"]
    print(f"best: plain {best['plain']['rate']:.0f} req/s, guarded {best['guarded']['rate']:.0f}"
          f" req/s; guarded / plain = {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
