"""Compute shared by the stages, the demo and a Ray worker: imports no store (but its repo-root path), no app."""
