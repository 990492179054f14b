"""The backends that ship with Flux. Each registers through the ``flux.backends``
entry point group in pyproject.toml, exactly as a third-party backend would."""
