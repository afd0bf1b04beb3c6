"""The JSON-lines event protocol between the engine and its callers, and the process runner."""
