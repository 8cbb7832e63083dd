"""``python -m bench.physics`` (from the repository root)."""

from .cli import main

if __name__ == "__main__":
    main()
