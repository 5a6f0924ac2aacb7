"""`python -m qconvert`: the same entry and error contract as the `qconvert` command."""

from .cli.app import main

if __name__ == "__main__":
    main()
