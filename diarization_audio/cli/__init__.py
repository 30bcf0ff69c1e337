"""The commands: one module per command, the helpers they share and the HTTP client."""
