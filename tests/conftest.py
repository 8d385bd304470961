"""Shared pytest fixtures."""

from tests.netns import netns

__all__ = ["netns"]
