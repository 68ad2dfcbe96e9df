"""dcn: a peer-to-peer network that pools LLM servers, with no central server."""

__version__ = "0.1.0"
