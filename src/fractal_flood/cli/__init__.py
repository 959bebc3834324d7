"""The ``fractal-flood`` command: ``main.py`` builds the parser and runs a command,
``generate.py`` and ``serve.py`` hold those two commands, and ``args.py`` the argument
types all of them share. Nothing here imports torch until a command runs."""
