"""The target service: the large model's engine, verifying the draft's speculation each round.

``engine.py`` runs the rounds, ``loop.py`` owns the engine's thread, ``api.py`` serves the public
``Inference`` API, ``kv_events.py`` tells gateways which prefixes it caches, and ``server.py``
wires them to a port (docs/architecture.md).
"""
