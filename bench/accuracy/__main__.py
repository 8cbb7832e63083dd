"""``python -m bench.accuracy`` (from the repository root)."""

from .cli import main

if __name__ == "__main__":
    main()
