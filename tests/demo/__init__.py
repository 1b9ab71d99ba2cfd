"""Tests of ``exgra demo``."""
