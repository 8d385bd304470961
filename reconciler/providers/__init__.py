"""Providers: one module per resource kind, each offering read / pure diff / apply."""
