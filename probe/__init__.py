"""probe: an Internet-censorship measurement probe for messaging services."""

__version__ = "0.1.0"
