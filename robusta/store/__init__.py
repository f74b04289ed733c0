"""Stores: the offline tables in Iceberg through pyiceberg (tiles: ``tiles``, ``catalog``;
event volumes: ``volumes``; feature logs: ``feature_log``) and the online stores (``online``)."""
