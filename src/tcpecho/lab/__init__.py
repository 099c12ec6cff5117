"""The lab: reproduce the vanished-peer hang in network namespaces on one Linux machine."""
