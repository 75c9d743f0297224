"""Orchestration only: the order workflow and the contract it publishes."""
