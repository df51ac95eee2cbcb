"""`tiergate loadtest`: open-loop load generation against a gateway (HTTP) or its Redis streams."""
