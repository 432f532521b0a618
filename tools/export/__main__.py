import sys

from .export_bundle import main

sys.exit(main())
