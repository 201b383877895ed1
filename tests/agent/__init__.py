"""Tests of the phone agent: actions, the simulated phone, the agent loop."""
