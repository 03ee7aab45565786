"""Benchmarks of EdgeFleet against the raw limits of the machine they run on.

Every figure is measured in one run, on 127.0.0.1, next to the limits of the parts it is
made of (see ``bench/README.md``); nothing here is a timed unit test.
"""
