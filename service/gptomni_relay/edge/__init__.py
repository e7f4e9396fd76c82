"""The HTTP edge: the only code that imports uvicorn (tests/test_import_boundaries.py).

http_guard.py (its httptools protocol with limits; subclasses uvicorn's private classes, so
pyproject.toml pins the range and tests/test_uvicorn_contract.py checks them), server.py
(uvicorn on a pre-bound socket), raw_send.py (a streamed body's fast path to the server's own
send), hang_up.py (noticing a client that hangs up while an answer is idle)."""
