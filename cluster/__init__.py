"""The in-cluster reproduction of the force-deleted-pod hang, run by ``scripts/nox -s kind``.

It needs the repository (Dockerfile, manifests/, configs/) and Docker, kind and kubectl, so it
lives beside them rather than in the installed package. ``overlays`` holds what each overlay's
client is given, as data; ``reproduce`` creates the cluster, runs every overlay side by side,
force-deletes the server pods and reports each client's detection time in the lab's table.
"""
