"""Test support shipped with the package: the brute-force reference evaluator (the oracle)."""
