"""``python -m lightning_vit`` and the ``lightning-vit`` script: the command line (see :mod:`lightning_vit.cli`),
in a process with the allocator settings of :func:`lightning_vit.runtime.tune_malloc`."""

from lightning_vit.cli import main as cli_main
from lightning_vit.runtime import tune_malloc


def main() -> None:
    tune_malloc()
    cli_main()


if __name__ == "__main__":
    main()
