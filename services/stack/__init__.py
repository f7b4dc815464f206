"""`wharf-stack`: the whole registry on one machine, for `make run` and the tests."""
