"""Adapters: everything that talks to a concrete endpoint."""
