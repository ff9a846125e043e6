"""Configuration as code: the gateway's operator configuration as one YAML file (``manage.py tollgate``).

``export`` turns the database into a plain document named by natural keys (slugs and names); ``plan`` compares a
document with the database; ``apply`` carries the plan out in one transaction. ``schema.json`` describes the file.
"""

from __future__ import annotations


class ConfigError(Exception):
    """The file cannot be applied: a syntax error, a schema violation, a bad reference or an invalid value."""
