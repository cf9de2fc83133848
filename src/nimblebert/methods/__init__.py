"""Methods, one folder each; importing this package registers them all."""

from .registry import Knob, Method, get_method, list_methods, register_method

__all__ = ["Knob", "Method", "get_method", "list_methods", "register_method"]
