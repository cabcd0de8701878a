"""The node's web face: operator console, ``/metrics``, ``/healthz``, ``/readyz`` and STOW-RS in.

The only package that imports the web framework (Starlette on uvicorn) and ``prometheus_client``. Pages
read the index (through :mod:`samie_node.status` and the spool) and render on the server; actions call
the same functions as the command line (:mod:`samie_node.resend`, :mod:`samie_node.reprocess`); STOW-RS
hands each instance to the same :class:`~samie_node.net.receive.Receiver` as C-STORE.
"""
