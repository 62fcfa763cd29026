"""Connections to PostgreSQL (pipelined and pooled, TLS, WAL positions) and to the document
store, knowing nothing of routing. Imports no core/ and is imported by no core/."""
