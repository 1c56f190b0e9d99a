"""How the old-format state files here were written: with the code of commit 1fc4d52 (before
SQLite), `python tests/data/state-v0/make.py tests/data/state-v0`.  Kept as the record; it no
longer runs against the current code."""
import sys

from twisted.internet.task import Clock

from mup.gateway import DeliveryReport
from mup.outbox import Outbox
from mup.quota import Quota
from mup.routes import ReplyRoutes

d = sys.argv[1]
DAY = 1_800_000_000 - 1_800_000_000 % 86400  # 2027-01-15 00:00 UTC
clock = Clock()
clock.advance(DAY - 3600)  # yesterday 23:00
q = Quota(d, clock, sender_burst=5, sender_rate=10.0, sender_daily=50, global_daily=500)
assert q.reserve("Ann", 4) is None                  # yesterday: not today's count
clock.advance(3600 + 10 * 3600)                     # today 10:00
assert q.reserve("joe", 3) is None
assert q.reserve("pat", 2) is None
q.refund("pat", 2)                                  # gateway refused it
clock.advance(600)                                   # 10:10
assert q.reserve("Joe", 2) is None                   # joe: 5 today
q._log.close()
routes = ReplyRoutes(d, 12 * 3600, clock)
routes.record("+447911123456", "joe")
routes.record("+15555550100", "ann")
out = Outbox(d, clock)
out.record("r1", "kannel", "r1", "joe", "niemeyer")
out.record("r2", "twilio", "SM123", "ann", "pat")
out.record("r3", "kannel", "r3", "joe", "pat")
out.report(DeliveryReport("kannel", "r3", "delivered"))
out._log.close()
print(clock.seconds())
