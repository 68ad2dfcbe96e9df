"""The local HTTP gateway: an ASGI app served by hypercorn's trio worker."""
