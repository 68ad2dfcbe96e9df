"""Test kit shipped with dcn (as trio ships ``trio.testing``): network-namespace labs for real LAN tests."""
