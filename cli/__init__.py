"""The ``adaptkit`` command-line app (installed as ``adaptkit.cli``)."""
