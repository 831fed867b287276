"""Deployment kit: certificates and keys, service files and guides for real sites."""
