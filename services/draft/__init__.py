"""The draft service: the small model that speculates, building its next speculations while the
target verifies (docs/speculation.md). ``server.py`` serves the ``Speculation`` gRPC API,
``worker.py`` runs the rounds on one thread, ``tree.py`` and ``speculation_cache.py`` build and keep
the pre-built speculations, ``policy.py`` sizes the tree to the time the target gives it.
"""
