"""Wrote tests/data/old-journal and old-journal.json with mup/journal.py as of commit 1fc4d52
(the segment format the SQLite store imports).  Kept as a record: mup/journal.py is gone now.

Usage, in a worktree of 1fc4d52: ``python make_old_journal.py tests/data/old-journal``.  The
journal holds 12 early messages, all delivered (their segment deleted, the keys carried in the
``keys`` file), then 20 messages and a delivery report of which every fourth message is
delivered (done records in the segments) and the rest pending.
"""

import json
import os
import shutil
import sys

from twisted.internet.task import Clock

from mup.journal import Journal  # type: ignore[import-not-found]


def main(out: str) -> None:
    shutil.rmtree(out, ignore_errors=True)
    clock = Clock()
    clock.advance(1_700_000_000)
    j = Journal.open(out, reactor=clock, segment_bytes=1024, threaded=False)

    def run() -> None:
        for _ in range(50):
            clock.advance(0)

    for i in range(12):
        j.append(f"kannel:early-{i}", {
            "kind": "sms", "gateway": "kannel", "id": f"early-{i}", "from": "+15555550100",
            "to": "4242", "text": f"early {i}", "received": clock.seconds(), "extra": {}})
        run()
        clock.advance(1)
    for e in j.pending():
        j.mark_done(e.seq)
        run()
    clock.advance(1)
    for i in range(20):
        j.append(f"kannel:m-{i}", {
            "kind": "sms", "gateway": "kannel", "id": f"m-{i}", "from": f"+1555555010{i % 3}",
            "to": "4242", "text": f"message {i} \u00e9\u2713", "received": clock.seconds(),
            "extra": {"relay": f"kannel:m-{i}"} if i == 5 else {}})
        run()
        clock.advance(1)
    j.append("twilio:report:SM1:delivered", {"kind": "report", "gateway": "twilio",
                                             "id": "SM1", "state": "delivered", "reason": ""})
    run()
    for e in j.pending():
        if e.key.startswith("kannel:m-") and int(e.key[9:]) % 4 == 0:
            j.mark_done(e.seq)
            run()
    clock.advance(1)
    run()
    j.close()
    os.unlink(os.path.join(out, "lock"))

    j2 = Journal.open(out, reactor=clock, threaded=False)
    expected = {
        "pending": [[e.seq, e.key, e.record, e.appended] for e in j2.pending()],
        "done_keys": {k: t for k, t in {**j2._carried, **j2._keys}.items()
                      if not j2.is_pending(k)},
        "written_at": clock.seconds()}
    j2.close()
    os.unlink(os.path.join(out, "lock"))
    with open(os.path.join(os.path.dirname(out.rstrip("/")), "old-journal.json"), "w") as f:
        json.dump(expected, f, indent=1, ensure_ascii=False)


if __name__ == "__main__":
    main(sys.argv[1])
