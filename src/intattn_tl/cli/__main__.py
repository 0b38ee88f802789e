"""`python -m intattn_tl.cli ...` is `intattn ...`."""

import sys

from intattn_tl.cli import main

sys.exit(main())
