import sys

from bids_brainage.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
