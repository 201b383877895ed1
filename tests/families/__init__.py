"""Tests of model families added through the registry table."""
