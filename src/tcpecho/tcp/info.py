"""The kernel's own view of a TCP connection (``TCP_INFO``): retransmissions, backoff, RTO.

When a peer goes silent these counters are what the kernel is doing about it: how many
times it has retransmitted, how far the retransmission timer has backed off, how many
keepalive probes are unanswered. The client reads them when a connection fails (through a
duplicate of the socket's descriptor, since the event loop has closed its own by then) and
reports them in ``connection_failed``.

The layout is ``struct tcp_info`` from ``linux/tcp.h``, up to ``tcpi_total_retrans``, which
every kernel since 2.6 fills in.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from dataclasses import fields as dataclass_fields
from typing import Protocol

# u8 state, ca_state, retransmits, probes, backoff, options, wscale, flags; then u32s:
# rto, ato, snd_mss, rcv_mss, unacked, sacked, lost, retrans, fackets, last_data_sent,
# last_ack_sent, last_data_recv, last_ack_recv, pmtu, rcv_ssthresh, rtt, rttvar,
# snd_ssthresh, snd_cwnd, advmss, reordering, rcv_rtt, rcv_space, total_retrans.
_LAYOUT = struct.Struct("=8B24I")
TCP_INFO: int = getattr(socket, "TCP_INFO", 11)

STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
}


class InfoSocket(Protocol):
    def getsockopt(self, level: int, option: int, buflen: int, /) -> bytes: ...


@dataclass(frozen=True)
class TcpInfo:
    state: str
    retransmits: int  # retransmissions of the current unacknowledged data
    probes: int  # unanswered zero-window or keepalive probes
    backoff: int  # how many times the retransmission timer has doubled
    rto_ms: float
    unacked: int  # segments sent and not acknowledged
    lost: int
    total_retrans: int  # every retransmission over the connection's life
    rtt_ms: float
    rttvar_ms: float
    last_data_sent_ms: int  # since the last data segment left
    last_data_recv_ms: int  # since the last data arrived
    last_ack_recv_ms: int  # since the peer last acknowledged anything

    def as_dict(self) -> dict[str, object]:
        # Its fields are plain values: a flat copy says the same as dataclasses.asdict, which
        # deep-copies each and cost 1.5 s of a 20,000-socket watch -A snapshot.
        return {field.name: getattr(self, field.name) for field in dataclass_fields(self)}


def read_tcp_info(sock: InfoSocket) -> TcpInfo:
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _LAYOUT.size)
    fields = _LAYOUT.unpack(raw.ljust(_LAYOUT.size, b"\0")[: _LAYOUT.size])
    state, _ca_state, retransmits, probes, backoff = fields[:5]
    rto, _ato, _snd_mss, _rcv_mss, unacked, _sacked, lost, _retrans, _fackets = fields[8:17]
    last_data_sent, _last_ack_sent, last_data_recv, last_ack_recv = fields[17:21]
    rtt, rttvar = fields[23:25]
    total_retrans = fields[31]
    return TcpInfo(
        state=STATE_NAMES.get(state, str(state)),
        retransmits=retransmits,
        probes=probes,
        backoff=backoff,
        rto_ms=rto / 1000,
        unacked=unacked,
        lost=lost,
        total_retrans=total_retrans,
        rtt_ms=rtt / 1000,
        rttvar_ms=rttvar / 1000,
        last_data_sent_ms=last_data_sent,
        last_data_recv_ms=last_data_recv,
        last_ack_recv_ms=last_ack_recv,
    )


def listen_queue(sock: InfoSocket) -> tuple[int, int]:
    """A listening socket's accept queue: (connections waiting, the most the kernel holds).

    On a listener ``TCP_INFO`` reports these in ``tcpi_unacked`` and ``tcpi_sacked``; they are
    ``ss -ltn``'s Recv-Q and Send-Q. The most is the backlog given to ``listen``, capped at
    ``net.core.somaxconn``."""
    raw = sock.getsockopt(socket.IPPROTO_TCP, TCP_INFO, _LAYOUT.size)
    fields = _LAYOUT.unpack(raw.ljust(_LAYOUT.size, b"\0")[: _LAYOUT.size])
    waiting, most = fields[12], fields[13]
    return waiting, most
