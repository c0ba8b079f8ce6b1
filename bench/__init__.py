"""swgw benchmark suite: `python -m bench` runs it all (see bench/suite.py and bench/README.md)."""
