"""The commands a user runs from a checkout: the quickstart (launch/quickstart.py) and its stage runner."""
