"""Authentication: challenges, credentials (docker config.json and helpers), and bearer tokens."""
