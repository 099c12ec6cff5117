"""The cookbook behind ``docs/cookbook.md`` and ``scripts/nox -s cookbook``: for each client
stack, how to bound the hang after a peer vanishes, measured in the lab.

``recipes`` holds each stack's recipes as data (library, settings, the client and server
commands, what the client's socket must carry, the library's own deadlines); ``clients/``,
``servers/`` and ``go/`` are the small programs they run; ``run`` builds what needs building,
feeds the recipes to ``tcpecho lab`` under ``force-delete``, writes ``out/cookbook.json`` and
checks every measurement against its prediction; ``table`` renders the measured table of
``docs/cookbook.md`` from that file.
"""
