"""`python -m kiln ...` runs the command line, the same as the `kiln` script."""
import sys

from .cli.main import main

sys.exit(main())
