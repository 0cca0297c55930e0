"""Embedded data: the captioned emoji image set of the ideal backend and the default input images."""
