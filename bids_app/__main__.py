"""Allow ``python -m bids_app``."""

from .cli.run import main

if __name__ == "__main__":
    main()
