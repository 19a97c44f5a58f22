"""Run ``python -m cds_service.cli`` as the ``voclosporin-cds`` command."""

from __future__ import annotations

import sys

from cds_service.cli import main

sys.exit(main())
