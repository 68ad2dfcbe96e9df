"""Trio shells around the pure cores: sockets, tasks and deadlines. Library errors are translated here."""
