"""The benchmark suite behind ``nox -s bench``: the harness, its peers and their results.

``run`` starts every server under test and measures them in interleaved rounds;
``peers`` says how each server is built and started; ``chart`` draws the results;
``echoload.c`` is the C load client, ``go/`` the Go peer, ``streams_echo`` the plain
asyncio streams baseline.
"""
