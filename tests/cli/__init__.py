"""Black-box tests: `key-server` and `key-client` as separate processes over the sim radio."""
