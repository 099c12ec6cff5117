"""The kernel model: when Linux gives up on a peer that failed, for given sysctls and options.

Everything here is arithmetic on the kernel's rules, checked against measurements on this
project's machines (``docs/kernel-facts.md``); the lab and the cluster run print it next
to what they measure. It takes the client's settings as they are (``TcpOptions`` and its
``Deadlines``) and the network namespace's sysctls (``KernelSettings``).

Its parts: ``kernel`` (the sysctls, the budgets they stand for and the timers' schedule),
``in_force`` (a socket's own options over its namespace's sysctls), ``predict`` (when and
how a failure is noticed), ``elapsed`` (how long a connection has been waiting, rebuilt
from its timers), ``field`` (the faults of the path users report most: a middlebox that
forgets an idle flow, a partition that heals, a reused address, a stalled reader, a proxy
in between; survival is a prediction there too). This package's names are its
interface: import them from here.

The rules, for a small request that is never acknowledged (an *active* connection):

- a tail-loss probe goes out after about 200 ms, the first RTO retransmission after
  another RTO (``max(TCP_RTO_MIN, srtt + 4 rttvar)``, about 204 ms on a fast link); that
  first retransmission starts the give-up clock;
- each expiry doubles the RTO, up to ``tcp_rto_max_ms`` (120 s, per namespace from 6.15);
- ``tcp_retries2`` becomes a time budget: the sum of an RTO series that starts at
  TCP_RTO_MIN and has ``tcp_retries2 + 1`` terms (924.6 s for 15). The kernel gives up at
  the first expiry at or after the budget; with TCP_USER_TIMEOUT set, the budget is the
  user timeout instead and the timer is clamped to end exactly there;
- keepalive sends nothing while data is unacknowledged;
- a socket its program closed (or died holding) with data or its FIN unacknowledged is an
  *orphan*: ``tcp_orphan_retries`` takes the place of ``tcp_retries2`` (0, the default,
  stands for 8: a 102.2 s budget), and ``tcp_max_orphans`` or memory pressure may end it
  sooner.

For an *idle* connection only keepalive can notice anything: the first probe goes out
after the idle time, then one per interval; the kernel gives up after ``count`` unanswered
probes, or, with TCP_USER_TIMEOUT set, at the first probe time past it.

Kernel timers fire a few percent late (timer-wheel granularity), so predictions are
ranges. Each states which clock it runs on: from the unanswered request, from the last
data received, or from the fault itself (a FIN or RST arrives at once).
"""

from tcpecho.model.elapsed import first_rto_s, stuck_for_s
from tcpecho.model.field import (
    Traffic,
    after_idle_expiry,
    after_ip_reuse,
    after_partition,
    behind_proxy,
    idle_ping,
    stalled_reader,
)
from tcpecho.model.in_force import InForce, Keepalive
from tcpecho.model.kernel import (
    FIRST_RTO_S,
    KEEPALIVE_EARLY_S,
    TCP_RTO_MIN_S,
    TCP_TIMEOUT_INIT_S,
    TIMER_SLACK,
    TLP_ANY_S,
    TLP_S,
    KernelSettings,
    give_up_after_send,
    orphan_budget,
    orphan_retries,
    read_own_sysctl,
    retransmission_expiries,
    retries2_budget,
    step_at,
    syn_budget,
    syn_expiries,
)
from tcpecho.model.predict import (
    APP_TIMER_S,
    FAST_S,
    NEVER,
    SCHEDULING_S,
    Activity,
    Clock,
    Failure,
    Mechanism,
    Outcome,
    Prediction,
    predict,
)

__all__ = [
    "APP_TIMER_S",
    "FAST_S",
    "FIRST_RTO_S",
    "KEEPALIVE_EARLY_S",
    "NEVER",
    "SCHEDULING_S",
    "TCP_RTO_MIN_S",
    "TCP_TIMEOUT_INIT_S",
    "TIMER_SLACK",
    "TLP_ANY_S",
    "TLP_S",
    "Activity",
    "Clock",
    "Failure",
    "InForce",
    "Keepalive",
    "KernelSettings",
    "Mechanism",
    "Outcome",
    "Prediction",
    "Traffic",
    "after_idle_expiry",
    "after_ip_reuse",
    "after_partition",
    "behind_proxy",
    "first_rto_s",
    "give_up_after_send",
    "idle_ping",
    "orphan_budget",
    "orphan_retries",
    "predict",
    "read_own_sysctl",
    "retransmission_expiries",
    "retries2_budget",
    "stalled_reader",
    "step_at",
    "stuck_for_s",
    "syn_budget",
    "syn_expiries",
]
