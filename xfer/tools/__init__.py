"""Commands built on the fitting core: rank sources, compare strategies, search, export, the demo."""
