"""Entry point of the application folder (``python tools/monai_deploy -i ... -o ... -m ...``; what a MAP runs)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import main  # noqa: E402

sys.exit(main())
