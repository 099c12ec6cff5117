"""``tcpecho bench``: the load generator that measures an echo path from the client's side.

``runner`` owns a run end to end (processes, the start barrier, progress, the report);
``load`` owns the per-connection protocols and one process's share of the load;
``histogram`` owns the latency histogram; ``report`` turns results into text and JSON.
The modules are imported only when the command runs, so ``tcpecho --help`` stays fast.
"""
