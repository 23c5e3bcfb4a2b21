"""Signing keys, JWKS, and the gateway's short-lived internal tokens."""
