"""reconciler: declarative, GitOps-style configuration reconciler for Linux hosts."""

__version__ = "0.1.0"
