"""The lab: reproduce the vanished-peer hang in network namespaces on one Linux machine.

``topology`` builds a client pod, a node with kube-proxy DNAT and a server pod; ``faults``
breaks the path; ``profiles`` names the client settings to compare; ``runner`` runs every
case in parallel and records what the client logged; ``report`` prints the table, the JSON
and the chart; ``main`` checks the machine and cleans up whatever happens.
"""
