"""The echo client: the request/verify loop, its deadlines and retries, and how it reports
what the kernel did when a peer vanished (``client``)."""
