"""wharf_client: talk to any OCI Distribution registry, and the `wharf` command line."""
