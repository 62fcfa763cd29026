"""The client edge: framing, authentication and flow control of client connections, the
fast path, and failures turned into wire errors. Below router/node.py, above engine/."""
