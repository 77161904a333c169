import sys

from morered.cli.main import main

sys.exit(main())
