"""`python -m shortlist.cluster` (what `infra/local-cluster` runs): `cli.main`'s exit status."""

import sys

from shortlist.cluster.cli import main

sys.exit(main())
