"""One module per registry resource; each view parses, calls a service and formats."""
