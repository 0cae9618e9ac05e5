"""`python -m hessfree ...` is the same as the `hessfree` console script."""

from hessfree.cli.main import main

if __name__ == "__main__":
    main()
