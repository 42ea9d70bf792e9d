"""``python -m lightning_vit``: the command line (see :mod:`lightning_vit.cli`)."""

from lightning_vit.cli import main

if __name__ == "__main__":
    main()
