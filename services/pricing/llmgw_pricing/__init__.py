"""Pricing service: effective model prices over NATS."""
