"""The relay's infrastructure: how it reaches the parts outside the process (the shared store's Redis)."""
