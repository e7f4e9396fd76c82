"""Error text that never quotes the values it is about: those are cookies and API keys."""

from __future__ import annotations

from pydantic import ValidationError


def describe_validation_error(exc: ValidationError) -> str:
    """Where and what, never the offending value (pydantic's own text quotes the input)."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '<root>'}: {err['msg']}"
        for err in exc.errors(include_input=False, include_url=False, include_context=False)
    )
