"""Command line interface (thin: parse arguments, call the API, format output)."""
