"""codefoundry: the code-intelligence chain in one package."""

__version__ = "0.1.0"
