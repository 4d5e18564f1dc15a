"""Runtime: the wire protocol, the cloud server hosting tails, and the edge client running heads."""
