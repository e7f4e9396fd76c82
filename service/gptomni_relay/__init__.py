"""gptomni relay: serves the GPT-Omni web chat as an OpenAI-compatible API."""

__version__ = "0.1.0"
