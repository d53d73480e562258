"""Inference front ends: the chat REPL (and, later, the server)."""
