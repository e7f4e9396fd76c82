"""The OpenAI-compatible HTTP surface: routes, wire schemas, reading requests, writing
completions and server-sent events, and the one mapping from domain errors to OpenAI
error objects (`errors.py`)."""
