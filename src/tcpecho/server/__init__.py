"""The echo server: the per-connection protocol (``protocol``), one process serving and
shutting down (``server``), and N processes sharing a port (``supervisor``)."""
