"""Code shared by sites, the coordinator and simulations.

Nothing in this package imports :mod:`client` or :mod:`server`: it holds the
public schema, the schema-only transformer, generator models, privacy maths,
message keys and typed configuration that both sides agree on.
"""
