"""The `diffier` commands, one module each; shared options are declared once in options.py.

A command module parses its options into the task's options object and hands it over; none
imports torch, so `diffier --help` stays instant.
"""
