"""Tests of the cookbook: its recipes, its checks and the page its figures go into."""
