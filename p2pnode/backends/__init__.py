"""Local compute: adapters for the LLM servers a node runs next to, and the machine's resources."""
