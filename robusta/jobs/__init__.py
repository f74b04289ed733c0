"""The jobs: everything that writes stores.

``materialize`` (batch tiles and ``compact``), ``upload`` (tiles to the online store),
``stream`` (micro-batches into both) and ``volumes`` (event counts). A job runs an engine
(``robusta.engine``) and commits what it wrote to the stores (``robusta.store``); it imports
no read API, no lookup client and no CLI.
"""
