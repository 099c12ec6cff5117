"""The servers the cookbook's clients talk to, where Debian has none to run as is (gRPC)."""
