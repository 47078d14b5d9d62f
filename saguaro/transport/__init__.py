"""The co-located fast paths between a target and its draft (docs/speculation.md, "Transports").

A draft in the same pod as its target can skip gRPC: the handshake offers a ``MessageLink``
that carries whole round messages in order, both ways. Two links implement it:

* ``socket_link`` — a Unix-domain socket in Linux's abstract namespace (the default)
* ``torch_link``  — a two-rank torch.distributed group (gloo on CPU, NCCL on GPU nodes)

This package imports nothing, so the socket link never loads torch.
"""
