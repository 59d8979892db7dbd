"""thinkrec: sequential recommendation whose models think before they recommend."""

__version__ = "0.1.0"
