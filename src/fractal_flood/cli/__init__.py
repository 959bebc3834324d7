"""The ``fractal-flood`` command: ``main.py`` builds the parser and runs a command;
``generate.py`` and ``serve.py`` hold those two commands."""
