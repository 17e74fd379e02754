__version__ = "0.1.0"
#: The name on the package index (``cirron`` there is an unrelated project); import name and command stay ``cirron``.
DISTRIBUTION = "cirron-trace"
