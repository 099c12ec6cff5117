"""``python -m tcpecho``: the same command line as the ``tcpecho`` script."""

from tcpecho.cli import main

main(prog_name="tcpecho")
