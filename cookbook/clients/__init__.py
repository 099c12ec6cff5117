"""The cookbook's client programs, one per stack: each runs busy (a request every second) or
idle (one exchange, then a wait that never ends), with its library's defaults or with the
cookbook's recommended settings, and exits non-zero when its connection fails."""
