"""`python -m core ...` from the repository root: see core/cli.py."""
import sys

from .cli import main

sys.exit(main())
