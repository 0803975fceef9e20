"""The package version, written once: pyproject.toml reads it from here (setuptools ``attr``), and the package,
the CLI and the files the tool writes import it from here (a leaf module, so importing it ties no modules
together)."""
__version__ = "0.1.0"
