"""Renderers: turn ``Plan.to_dict()`` into text or JSON. They never see Plan objects."""
