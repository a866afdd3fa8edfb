"""Job files that ship with ltray (the demo's), read with importlib.resources."""
